"""The one training loop shared by every task (launch/task.py): sharding, checkpoints, resume, evaluation, logging.

Config fields read here (every task config has them; the rest of the config belongs to the task):
  task: registry name (launch/tasks/__init__.py).
  seed: int; the init key and every step's key (fold_in(step)) derive from it, so a resumed run is exact.
  num_steps: total optimisation steps.
  batch_size: global batch; must divide by the device count and by the process count.
  log_every, eval_every, checkpoint_every: intervals in steps (eval_every <= 0 disables evaluation).
  keep_checkpoints: how many of the newest checkpoints to keep.
  matmul_precision: precision of the train step's float32 convolutions and matmuls (MATMUL_PRECISIONS, jax's names):
    'default' is one bfloat16 pass on TPUs and TF32 on NVIDIA GPUs since Ampere, 'high' three bfloat16 passes on
    TPUs (TF32 on GPUs), 'highest' full float32. CPUs compute float32 whatever the value, so it changes nothing there.

Throughput: the batches of the next PREFETCH_BATCHES steps are sharded onto the devices while the current step runs,
and the step metrics stay on the devices, summed over each log interval, until one transfer at the log, checkpoint or
evaluation step. So the host never waits for a step to finish between those. A non-finite loss is therefore noticed
at the end of its interval (at most log_every steps late), still before any checkpoint after it is written. A task
can also stop its training on finite losses (launch.task.Watched: a GAN's collapse), checked at the same points.

Workdir layout: checkpoints/ (orbax CheckpointManager; items 'state', 'data', 'config', read by launch/checkpoints.py),
metrics.jsonl (one JSON object per log/eval event), tensorboard/ (event files), eval/step_XXXXXXXX.png (image grids),
samples/ (held-out inputs, for tasks that write them).

Resuming is automatic from the newest readable checkpoint. A newer step that cannot be read (a write cut short)
is skipped with one warning naming it and what failed; it is renamed to checkpoints/<step>.unreadable (kept for
inspection, out of the way of the steps this run writes again) and the recovery is recorded in metrics.jsonl as a
{"split": "recovery"} record. Only the fields in RESUMABLE_FIELDS (loop bookkeeping)
and the task's own `resumable_fields` (launch/task.py) may differ from the checkpoint's config (a field the
checkpoint predates counts as the task's `added_field_defaults` value); any other difference (model, loss, data,
batch size, seed, ...) is refused, as is a different process count (the data iterator's state is saved per
process). The device count may change.
"""
import bisect
import collections
import json
import pathlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

from absl import logging
import flax.serialization
import flax.traverse_util
import grain
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image
import tensorboardX
import tqdm

from input_pipeline import errors
from launch import checkpoints
from launch import task as task_lib
from launch import tasks

# These only say how long to train and how often to log, evaluate and checkpoint, so a checkpoint written with other
# values resumes (e.g. to train longer). A task whose schedule depends on num_steps (DFC-Net's learning-rate decay)
# continues on the schedule of the new length.
# matmul_precision only changes how finely the hardware rounds, as a resume on other hardware (or another device
# count) does.
RESUMABLE_FIELDS = frozenset({"num_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
                              "matmul_precision"})
DATA_AXIS = "data"
MATMUL_PRECISIONS = ("default", "high", "highest", "bfloat16", "tensorfloat32", "float32")
# Sharded batches kept on the devices ahead of the step being dispatched.
PREFETCH_BATCHES = 2


class NonFiniteError(errors.ProjectError, FloatingPointError):
  """The loss or the train state became NaN/Inf; the last good checkpoint is kept."""


class TrainingFailedError(errors.ProjectError, RuntimeError):
  """The task's own check (launch.task.Watched) found a failure with finite losses; the last good checkpoint is
  kept."""


class CheckpointMismatchError(errors.ProjectError, ValueError):
  """The workdir holds a checkpoint of another model or an incompatible config."""


def make_mesh(devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A 1-D ('data',) mesh over `devices` (default: all devices of all processes)."""
  devices = list(jax.devices() if devices is None else devices)
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def shard_batch(local_batch: task_lib.Batch, sharding: jax.sharding.NamedSharding) -> task_lib.Batch:
  """Assembles each process's share of the batch into global arrays split over the 'data' axis."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def local_copy(tree: Any) -> Any:
  """The process-local shard 0 of each (replicated) array: a full copy that lives on one device."""
  return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)


def checkpoint_config(task: task_lib.Task, config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The JSON 'config' item of a training checkpoint (superset of what launch/checkpoints.py needs)."""
  return {
      "model": task.name,
      "model_config": task.model_config(),
      "experiment": json.loads(config.to_json_best_effort()),
      "process_count": jax.process_count(),
  }


def resumable_fields(task: task_lib.Task) -> frozenset[str]:
  """Config fields (dotted paths) that may differ between a checkpoint and the run resuming from it."""
  return RESUMABLE_FIELDS | task.resumable_fields


def config_differences(saved: dict[str, Any], current: dict[str, Any],
                       resumable: frozenset[str] = RESUMABLE_FIELDS,
                       added_field_defaults: Mapping[str, Any] | None = None) -> list[str]:
  """Human-readable differences between two checkpoint configs that forbid resuming; [] if compatible.

  Fields in `resumable` (dotted paths into the experiment config) may differ. A field of `added_field_defaults`
  that the checkpoint lacks counts as having that value (what the code did before the field existed)."""
  if "experiment" not in saved:
    return ["the checkpoint has no training config (an inference-only checkpoint cannot be resumed)"]
  diffs = []
  for field in ("model", "process_count"):
    if saved.get(field) != current[field]:
      diffs.append(f"{field}: checkpoint {saved.get(field)!r}, now {current[field]!r}")
  flatten = lambda tree: flax.traverse_util.flatten_dict(tree, sep=".")
  old, new = {**(added_field_defaults or {}), **flatten(saved["experiment"])}, flatten(current["experiment"])
  for key in sorted(old.keys() | new.keys()):
    if key in resumable or old.get(key, "<absent>") == new.get(key, "<absent>"):
      continue
    diffs.append(f"{key}: checkpoint {old.get(key, '<absent>')!r}, now {new.get(key, '<absent>')!r}")
  return diffs


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _strong(tree: Any) -> Any:
  # Restored arrays are never weakly typed; making fresh ones match keeps one compiled step for both.
  return jax.tree.map(lambda x: jax.lax.convert_element_type(x, x.dtype), tree)


def _add_step(window, metrics: dict[str, jax.Array], step: jax.Array):
  """(metric sums, first step with a non-finite loss or 0) of a log interval, with one more step's metrics."""
  sums, first_non_finite = window
  first_non_finite = jnp.where((first_non_finite == 0) & ~jnp.isfinite(metrics["loss"]), step, first_non_finite)
  return jax.tree.map(lambda s, m: s + m.astype(s.dtype), sums, metrics), first_non_finite


_start_window = jax.jit(lambda metrics, step: _add_step(
    (jax.tree.map(lambda m: jnp.zeros(m.shape, jnp.float32), metrics), jnp.zeros((), jnp.int32)), metrics, step))
_add_to_window = jax.jit(_add_step, donate_argnums=0)


def prefetch_horizon(step: int, checkpoint_every: int, num_steps: int, depth: int = PREFETCH_BATCHES) -> int:
  """The last step whose batch may be on the devices while `step` is dispatched: `depth` steps ahead, but never
  past the next checkpoint, so that the data iterator state a checkpoint saves is exactly that of the batches
  trained on (a prefetched batch beyond it would be skipped on resume)."""
  next_checkpoint = min(-(-step // checkpoint_every) * checkpoint_every, num_steps)
  return min(step + depth, next_checkpoint)


class _Logs:
  """Process 0's JSONL log, TensorBoard writer and image grids (no-ops on other processes)."""

  def __init__(self, workdir: pathlib.Path, start_step: int, enabled: bool):
    self.enabled = enabled
    self.workdir = workdir
    if not enabled:
      return
    self.jsonl = workdir / "metrics.jsonl"
    # Records past the resumed step came from a run that was interrupted before checkpointing them.
    if self.jsonl.exists():
      kept = [line for line in self.jsonl.read_text().splitlines() if json.loads(line)["step"] <= start_step]
      self.jsonl.write_text("".join(line + "\n" for line in kept))
    # TensorBoard likewise hides the earlier run's events from the first step this run logs on.
    self.tb = tensorboardX.SummaryWriter(str(workdir / "tensorboard"),
                                         purge_step=start_step + 1 if start_step else None)

  def write(self, step: int, split: str, metrics: dict[str, float], image: np.ndarray | None = None) -> None:
    if not self.enabled:
      return
    # Some metrics are undefined on small images (NaN); JSON has no NaN, so they are logged as null.
    record = {"step": step, "split": split, **{k: v if np.isfinite(v) else None for k, v in metrics.items()}}
    for name, value in metrics.items():
      if np.isfinite(value):
        self.tb.add_scalar(f"{split}/{name}", value, step)
    if image is not None:
      path = self.workdir / "eval" / f"step_{step:08d}.png"
      path.parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(image).save(path)
      record["image"] = str(path.relative_to(self.workdir))
      self.tb.add_image(f"{split}/grid", image, step, dataformats="HWC" if image.ndim == 3 else "HW")
    with self.jsonl.open("a") as f:
      f.write(json.dumps(record) + "\n")
    self.tb.flush()

  def note(self, step: int, split: str, fields: dict[str, Any]) -> None:
    """A JSON-only record (no TensorBoard scalars), e.g. a checkpoint recovery."""
    if self.enabled:
      with self.jsonl.open("a") as f:
        f.write(json.dumps({"step": step, "split": split, **fields}) + "\n")

  def close(self) -> None:
    if self.enabled:
      self.tb.close()


def make_train_step(task: task_lib.Task, mesh: jax.sharding.Mesh, matmul_precision: str = "default",
                    task_step: task_lib.StepFn | None = None):
  """task.train_step (or `task_step`, one of a Phased task's steps) jitted for `mesh`: (state, global batch, base
  key) -> (state, metrics).

  The step's key is fold_in(base key, state.step), so it depends only on the step number (exact resume). The
  state is donated: the caller must not reuse the state it passes in. Its float32 convolutions and matmuls run at
  `matmul_precision` (one of MATMUL_PRECISIONS; the config's matmul_precision field).
  """
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  data_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(DATA_AXIS))

  # The step is specialised to the platform of the devices it is compiled for, which need not be jax's default
  # backend (an ahead-of-time compile for a TPU from a CPU host: benchmarks/aot_report.py).
  platform = mesh.devices.flat[0].platform
  if task_step is None:
    task_step = task.train_step_for(platform) if isinstance(task, task_lib.PlatformDependent) else task.train_step

  def step_fn(state, batch, key):
    with jax.default_matmul_precision(matmul_precision):
      return task_step(state, batch, jax.random.fold_in(key, state.step))

  return jax.jit(step_fn, in_shardings=(replicated, data_sharding, replicated),
                 out_shardings=(replicated, replicated), donate_argnums=0)


def _set_aside(directory: pathlib.Path, step: int) -> pathlib.Path:
  """Renames an unreadable step to <step>.unreadable[.<n>]: orbax neither lists it nor writes over it."""
  target = directory / f"{step}.unreadable"
  n = 1
  while target.exists():
    target, n = directory / f"{step}.unreadable.{n}", n + 1
  (directory / str(step)).rename(target)
  return target


def make_init_state(task: task_lib.Task, mesh: jax.sharding.Mesh):
  """task.init_state jitted to a state replicated over `mesh`: (key, example per-process batch) -> state."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(lambda key, batch: _strong(task.init_state(key, batch)), out_shardings=replicated)


def _restore_or_init(task, config, manager, iterator, mesh, init_key):
  """Returns (state, start_step, recovery): restored from the newest readable checkpoint, or freshly initialised;
  `recovery` describes the unreadable newer steps that were skipped (None when there were none)."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  # Only shapes matter; zeros keep the initial state identical on every process.
  saved_iterator_state = iterator.get_state()
  example = jax.tree.map(lambda x: np.zeros_like(np.asarray(x)), next(iterator))
  iterator.set_state(saved_iterator_state)
  init = make_init_state(task, mesh)
  steps = list(manager.all_steps())
  if not steps:
    return init(init_key, example), 0, None
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated),
                          jax.eval_shape(init, init_key, example))
  resumable = resumable_fields(task)

  def restore(step: int):
    saved = checkpoints.with_current_model_name(
        manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config)
    diffs = config_differences(saved, checkpoint_config(task, config), resumable, task.added_field_defaults)
    if diffs:
      raise CheckpointMismatchError(
          f"Refusing to resume from {manager.directory / str(step)}: it was written with a different model or "
          "config (" + "; ".join(diffs) + "). Use another --workdir, or restore the original settings "
          f"(only {sorted(resumable)} may change).")
    return manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(flax.serialization.to_state_dict(abstract)),
        data=grain.checkpoint.CheckpointRestore(iterator)))

  step, restored, unreadable = checkpoints.restore_newest(manager.directory, steps, restore)
  recovery = None
  if unreadable:
    moved = []
    if jax.process_index() == 0:
      moved = [str(_set_aside(pathlib.Path(manager.directory), u.step)) for u in unreadable]
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("set aside unreadable checkpoints")
    manager.reload()
    recovery = {"resumed_from": step, "unreadable": [u._asdict() for u in unreadable], "moved_to": moved}
    logging.info("Resuming from checkpoint step %d; the unreadable newer step(s) %s are kept as %s.", step,
                    [u.step for u in unreadable], moved)
  logging.info("Resumed from %s.", manager.directory / str(step))
  return flax.serialization.from_state_dict(abstract, restored.state), step, recovery


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path, *,
                       task: task_lib.Task | None = None,
                       devices: Sequence[jax.Device] | None = None) -> task_lib.State:
  """Trains config.task for config.num_steps steps in `workdir` (resuming if it holds a checkpoint).

  Args:
    config: the experiment config (see the module docstring for the fields read here).
    workdir: output directory, shared by all processes.
    task: the task to train; by default the one config.task names in the registry.
    devices: devices of the data-parallel mesh; all devices by default.

  Returns:
    The final train state (replicated over the mesh).

  Raises:
    CheckpointMismatchError: the workdir's checkpoint belongs to another model/config.
    NonFiniteError: the loss or the state became NaN/Inf (the last good checkpoint is kept).
    TrainingFailedError: a launch.task.Watched task saw its training fail (the last good checkpoint is kept).
  """
  workdir = pathlib.Path(workdir).resolve()
  task = tasks.make_task(config) if task is None else task
  mesh = make_mesh(devices)
  process_index, process_count = jax.process_index(), jax.process_count()
  if config.batch_size % mesh.size or config.batch_size % process_count:
    raise errors.ConfigError(f"batch_size {config.batch_size} must divide by the {mesh.size} devices and "
                     f"{process_count} processes.")
  if config.matmul_precision not in MATMUL_PRECISIONS:
    raise errors.ConfigError(f"config.matmul_precision is {config.matmul_precision!r}; use one of "
                             f"{', '.join(MATMUL_PRECISIONS)}.")
  data_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(DATA_AXIS))

  init_key, train_key = jax.random.split(jax.random.PRNGKey(config.seed))
  iterator = iter(task.train_dataset(seed=config.seed, process_index=process_index, process_count=process_count))
  manager = ocp.CheckpointManager(
      workdir / "checkpoints",
      options=ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True,
                                           cleanup_tmp_directories=True))
  ckpt_config = checkpoint_config(task, config)
  state, start_step, recovery = _restore_or_init(task, config, manager, iterator, mesh, init_key)
  if start_step >= config.num_steps:
    logging.info("The checkpoint is at step %d >= num_steps %d: nothing to train.", start_step, config.num_steps)
  logs = _Logs(workdir, start_step, enabled=process_index == 0)
  if recovery:
    logs.note(start_step, "recovery", recovery)
  if process_index == 0:
    task.write_samples(workdir / "samples")

  # One compiled program per phase (launch.task.Phased), each compiled when its first step comes.
  phases = task.train_phases() if isinstance(task, task_lib.Phased) else ((0, None),)
  phase_starts = [first for first, _ in phases]
  phase_programs = {}

  def train_step(state, batch, key, step: int):
    """The program of the phase that loop step `step` (1-based; state.step is step - 1) falls in."""
    phase = bisect.bisect_right(phase_starts, step - 1) - 1
    if phase not in phase_programs:
      phase_programs[phase] = make_train_step(task, mesh, config.matmul_precision, phases[phase][1])
    return phase_programs[phase](state, batch, key)

  def last_good() -> str:
    latest = manager.latest_step()
    if latest is None:
      return f"No checkpoint was written yet (the first is due at step {config.checkpoint_every})."
    return f"The last good checkpoint (step {latest}) in {manager.directory} is kept."

  def save(step: int) -> None:
    if not bool(local_copy(_all_finite(state))):
      raise NonFiniteError(f"The train state holds NaN/Inf at step {step}; not checkpointing it. {last_good()}")
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
        data=grain.checkpoint.CheckpointSave(iterator),
        config=ocp.args.JsonSave(ckpt_config)))

  def evaluate(step: int) -> None:
    if process_index == 0:
      metrics, grid = task.evaluate(local_copy(state), step)
      logs.write(step, "eval", {k: float(v) for k, v in metrics.items()}, grid)
      logging.info("eval step %d: %s", step, metrics)

  window = None  # On the devices: (metric sums, first non-finite step) since window_start.
  window_start = (start_step, time.perf_counter())
  history = []  # (step, metric means) of this run's log intervals, for a Watched task.
  bar = tqdm.tqdm(total=config.num_steps, initial=start_step, unit="step", desc="train", dynamic_ncols=True,
                  disable=process_index != 0)

  def check(step: int, log: bool) -> None:
    """One transfer of the interval's metrics after `step` steps: stops on a non-finite loss or a Watched task's
    failure; logs their means."""
    nonlocal window, window_start
    sums, first_non_finite = jax.device_get(local_copy(window))
    if first_non_finite:
      raise NonFiniteError(f"Loss is not finite (NaN/Inf) at step {first_non_finite}, seen after step {step}; "
                           f"stopping. {last_good()}")
    first, started = window_start
    mean = {k: float(v) / (step - first) for k, v in sums.items()}
    if isinstance(task, task_lib.Watched):
      failure = task.training_failure([*history, (step, mean)])
      if failure:
        raise TrainingFailedError(f"Stopping after step {step}: {failure}. {last_good()}")
    if not log:
      return
    history.append((step, dict(mean)))
    mean["steps_per_sec"] = (step - first) / (time.perf_counter() - started)
    logs.write(step, "train", mean)
    bar.set_postfix(loss=f"{mean['loss']:.4g}")
    window, window_start = None, (step, time.perf_counter())

  try:
    ahead, loaded = collections.deque(), start_step  # Sharded batches of steps loaded - len(ahead) + 1 .. loaded.
    for step in range(start_step + 1, config.num_steps + 1):
      while loaded < prefetch_horizon(step, config.checkpoint_every, config.num_steps):
        ahead.append(shard_batch(next(iterator), data_sharding))
        loaded += 1
      state, metrics = train_step(state, ahead.popleft(), train_key, step)
      window = _start_window(metrics, state.step) if window is None else _add_to_window(window, metrics, state.step)
      bar.update(1)
      log_now = step % config.log_every == 0 or step == config.num_steps
      checkpoint_now = step % config.checkpoint_every == 0 or step == config.num_steps
      evaluate_now = config.eval_every > 0 and (step % config.eval_every == 0 or step == config.num_steps)
      if log_now or checkpoint_now or evaluate_now:
        check(step, log=log_now)
      if checkpoint_now:
        save(step)
      if evaluate_now:
        evaluate(step)
  finally:
    bar.close()
    manager.wait_until_finished()
    manager.close()
    logs.close()
  return state
