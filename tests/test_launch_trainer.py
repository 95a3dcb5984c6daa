"""The shared training loop's mechanics (launch/trainer.py) on tests/linear_task.py: cheap to compile, so these
tests cover resharded restore, exact resume, NaN handling, config mismatches and the logs in a few seconds."""
import json
import os
import shutil
import socket
import subprocess
import sys

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from launch import checkpoints
from launch import tasks
from launch import trainer
import linear_task


def _train(workdir, *, devices=None, task_cls=linear_task.LinearTask, **overrides):
  config = linear_task.get_config(**overrides)
  return trainer.train_and_evaluate(config, workdir, task=task_cls(config), devices=devices)


def _host(tree):
  return jax.tree.map(np.asarray, trainer.local_copy(flax.serialization.to_state_dict(tree)))


def _assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, _host(a), _host(b))


def test_task_base_gives_the_optional_parts_defaults(tmp_path):
  task = linear_task.LinearTask(linear_task.get_config())
  assert task.resumable_fields == frozenset() and dict(task.added_field_defaults) == {}
  task.write_samples(tmp_path / "samples")
  assert not (tmp_path / "samples").exists()


@pytest.mark.parametrize("num_devices", [1, 4])
def test_checkpoint_from_8_devices_restores_on_fewer_and_trains_on(tmp_path, num_devices):
  saved = _train(tmp_path / "run", num_steps=3)
  assert len(jax.devices()) == 8 and saved.params["w"].sharding.mesh.size == 8
  devices = jax.devices()[:num_devices]
  restored = _train(tmp_path / "run", num_steps=3, devices=devices)
  _assert_trees_equal(saved, restored)
  assert restored.params["w"].sharding.mesh.size == num_devices

  resumed = _train(tmp_path / "run", num_steps=5, devices=devices)
  straight = _train(tmp_path / "straight", num_steps=5)
  assert int(resumed.step) == 5
  # Other device counts reduce in another order: equal up to float rounding.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), _host(resumed), _host(straight))


def test_resume_is_bit_identical(tmp_path):
  straight = _train(tmp_path / "straight", num_steps=6)
  _train(tmp_path / "split", num_steps=3)
  resumed = _train(tmp_path / "split", num_steps=6)
  _assert_trees_equal(straight, resumed)


class _PhasedLinearTask(linear_task.LinearTask):
  """Its first 3 steps train nothing: they only advance state.step and log every metric as 0."""

  def train_phases(self):
    def warmup(state, batch, key):
      _, metrics = self.train_step(state, batch, key)
      return state.replace(step=state.step + 1), {name: jnp.zeros_like(v) for name, v in metrics.items()}

    return ((0, warmup), (3, self.train_step))


def test_a_phased_task_runs_each_phase_on_its_steps_and_resumes_across_the_boundary_bit_identically(tmp_path):
  straight = _train(tmp_path / "straight", task_cls=_PhasedLinearTask, num_steps=6, log_every=1)
  losses = {r["step"]: r["loss"] for r in map(json.loads, (tmp_path / "straight" / "metrics.jsonl").open())
            if r["split"] == "train"}
  assert [losses[s] == 0 for s in range(1, 7)] == [True] * 3 + [False] * 3
  _train(tmp_path / "split", task_cls=_PhasedLinearTask, num_steps=2, log_every=1)
  resumed = _train(tmp_path / "split", task_cls=_PhasedLinearTask, num_steps=6, log_every=1)
  _assert_trees_equal(straight, resumed)


def _truncate_step(checkpoint_dir, step):
  """Halves every file of a checkpoint step, as a write cut short by preemption or a full disk leaves it."""
  files = [f for f in (checkpoint_dir / str(step)).rglob("*") if f.is_file()]
  for f in files:
    f.write_bytes(f.read_bytes()[:f.stat().st_size // 2])
  return files


@pytest.mark.parametrize("part", ["state", "all"])
def test_resume_skips_an_unreadable_newest_checkpoint_and_stays_bit_identical(tmp_path, caplog, part):
  straight = _train(tmp_path / "straight", num_steps=6)
  _train(tmp_path / "split", num_steps=4)
  checkpoint_dir = tmp_path / "split" / "checkpoints"
  if part == "state":  # The array bytes only: orbax's OUT_OF_RANGE read error.
    for f in (checkpoint_dir / "4" / "state").rglob("*"):
      if f.is_file() and f.parent.name == "d":
        f.write_bytes(f.read_bytes()[:f.stat().st_size // 2])
  else:
    _truncate_step(checkpoint_dir, 4)
  broken = {f.relative_to(checkpoint_dir / "4"): f.read_bytes() for f in (checkpoint_dir / "4").rglob("*")
            if f.is_file()}
  with caplog.at_level("WARNING", logger="absl"):
    resumed = _train(tmp_path / "split", num_steps=6)
  _assert_trees_equal(straight, resumed)
  warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "unreadable" in r.getMessage()]
  assert len(warnings) == 1 and "step 4" in warnings[0] and "Error" in warnings[0], warnings
  # Kept, byte for byte, out of the way of the step 4 this run wrote again.
  kept = checkpoint_dir / "4.unreadable"
  assert {f.relative_to(kept): f.read_bytes() for f in kept.rglob("*") if f.is_file()} == broken
  assert ocp.CheckpointManager(checkpoint_dir).all_steps() == [1, 2, 3, 4, 5, 6]
  records = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
  recovery = [r for r in records if r["split"] == "recovery"]
  assert len(recovery) == 1 and recovery[0]["step"] == 3 and recovery[0]["resumed_from"] == 3
  assert [u["step"] for u in recovery[0]["unreadable"]] == [4] and recovery[0]["moved_to"] == [str(kept)]


def test_resume_names_every_step_when_none_is_readable(tmp_path):
  _train(tmp_path, num_steps=2)
  for step in (1, 2):
    _truncate_step(tmp_path / "checkpoints", step)
  with pytest.raises(checkpoints.CheckpointError, match=r"no checkpoint step can be read \(step 2: .*step 1: "):
    _train(tmp_path, num_steps=4)


def test_keeps_last_k_checkpoints(tmp_path):
  _train(tmp_path, num_steps=6, keep_checkpoints=2)
  assert ocp.CheckpointManager(tmp_path / "checkpoints").all_steps() == [5, 6]


@pytest.mark.parametrize("target", ["loss", "params"])
def test_non_finite_stops_and_keeps_last_good_checkpoint(tmp_path, target):
  with pytest.raises(trainer.NonFiniteError, match=r"at step 3.*last good checkpoint \(step 2\)"):
    _train(tmp_path, num_steps=6, nan_at_step=3, nan_target=target)
  with pytest.raises(trainer.NonFiniteError, match=r"at step 1.*No checkpoint was written yet \(the first is due at "
                     r"step 5\)"):
    _train(tmp_path / "fresh", num_steps=6, nan_at_step=1, checkpoint_every=5)
  manager = ocp.CheckpointManager(tmp_path / "checkpoints")
  assert manager.latest_step() == 2
  params = manager.restore(2, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state["params"]
  assert np.all(np.isfinite(params["w"]))


@pytest.mark.parametrize("nan_at_step, log_every, checkpoint_every, seen_after, last_good", [
    (3, 4, 2, 4, 2),  # Seen at the checkpoint step 4 (inside a log interval), before saving it.
    (5, 3, 4, 6, 4),  # Seen at the log step 6, two steps after the last checkpoint.
])
def test_non_finite_loss_is_seen_within_its_interval_before_any_later_checkpoint(
    tmp_path, nan_at_step, log_every, checkpoint_every, seen_after, last_good):
  with pytest.raises(trainer.NonFiniteError, match=rf"at step {nan_at_step}, seen after step {seen_after}; .*"
                     rf"last good checkpoint \(step {last_good}\)"):
    _train(tmp_path, num_steps=8, nan_at_step=nan_at_step, log_every=log_every, checkpoint_every=checkpoint_every,
           eval_every=0)
  assert ocp.CheckpointManager(tmp_path / "checkpoints").latest_step() == last_good


class _WatchedLinearTask(linear_task.LinearTask):
  """A launch.task.Watched task whose training fails once an interval ends at or after step `fail_after`; it
  records the histories it is shown."""

  def __init__(self, config):
    super().__init__(config)
    self.histories = []

  def training_failure(self, history):
    self.histories.append(list(history))
    last_step, means = history[-1]
    return f"loss {means['loss']:.6g} looked wrong" if last_step >= self.config.fail_after else None


@pytest.mark.parametrize("log_every, fail_after, shown, last_good", [
    (2, 4, [[2], [2, 4]], 2),  # Every checkpoint step is a log step.
    (4, 6, [[2], [4], [4, 6]], 4),  # At the checkpoint steps 2 and 6 between logs, the interval so far is shown.
])
def test_a_watched_task_stops_training_before_any_later_checkpoint(tmp_path, log_every, fail_after, shown,
                                                                    last_good):
  task = None

  def watched(config):
    nonlocal task
    config.fail_after = fail_after
    task = _WatchedLinearTask(config)
    return task

  with pytest.raises(trainer.TrainingFailedError, match=rf"^Stopping after step {fail_after}: loss .* looked wrong\. "
                     rf"The last good checkpoint \(step {last_good}\)"):
    _train(tmp_path, task_cls=watched, num_steps=8, log_every=log_every, checkpoint_every=2, eval_every=0)
  assert [[step for step, _ in history] for history in task.histories] == shown
  assert ocp.CheckpointManager(tmp_path / "checkpoints").latest_step() == last_good
  # The history holds the logged means.
  logged = {r["step"]: r["loss"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
            if r["split"] == "train"}
  for step, means in task.histories[-1][:-1]:
    assert means["loss"] == pytest.approx(logged[step], rel=1e-6)


def test_logged_train_metrics_are_the_means_of_their_steps(tmp_path):
  read = lambda workdir: [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()
                          if json.loads(line)["split"] == "train"]
  _train(tmp_path / "every", num_steps=6, log_every=1)
  _train(tmp_path / "three", num_steps=6, log_every=3)
  every, three = read(tmp_path / "every"), read(tmp_path / "three")
  assert [r["step"] for r in every] == list(range(1, 7)) and [r["step"] for r in three] == [3, 6]
  for name in ("loss", "grad_norm"):
    per_step = np.array([r[name] for r in every])
    np.testing.assert_allclose([r[name] for r in three], [per_step[:3].mean(), per_step[3:].mean()], rtol=1e-6)


def test_prefetch_runs_ahead_but_never_past_the_next_checkpoint():
  assert [trainer.prefetch_horizon(step, 3, 7, depth=2) for step in range(1, 8)] == [3, 3, 3, 6, 6, 6, 7]
  assert trainer.prefetch_horizon(10, 100, 1000) == 10 + trainer.PREFETCH_BATCHES


class _Preempted(Exception):
  pass


class _PreemptedAtStep4(linear_task.LinearTask):
  """Dies while evaluating step 4, when the batches up to step 6 have already been put on the devices."""

  def evaluate(self, state, step):
    if step == 4:
      raise _Preempted()
    return super().evaluate(state, step)


def test_resume_after_dying_between_checkpoints_is_bit_identical(tmp_path):
  # Checkpoint 3 must hold the data iterator's state after step 3's batch, not after the prefetched ones: those
  # would otherwise be skipped on resume.
  schedule = dict(num_steps=6, checkpoint_every=3, eval_every=1, log_every=3)
  straight = _train(tmp_path / "straight", **schedule)
  with pytest.raises(_Preempted):
    _train(tmp_path / "split", task_cls=_PreemptedAtStep4, **schedule)
  assert ocp.CheckpointManager(tmp_path / "split" / "checkpoints").all_steps() == [3]
  _assert_trees_equal(straight, _train(tmp_path / "split", **schedule))


def test_refuses_checkpoint_of_other_config_or_model(tmp_path):
  _train(tmp_path, num_steps=2)
  with pytest.raises(trainer.CheckpointMismatchError, match=r"learning_rate: checkpoint 0.1, now 0.2") as error:
    _train(tmp_path, num_steps=4, learning_rate=0.2, batch_size=16)
  assert "batch_size: checkpoint 8, now 16" in str(error.value)
  assert "num_steps: checkpoint" not in str(error.value)
  with pytest.raises(trainer.CheckpointMismatchError, match=r"model: checkpoint 'linear', now 'other'"):
    _train(tmp_path, num_steps=4, task_cls=linear_task.OtherTask)
  # Loop-bookkeeping fields may change.
  state = _train(tmp_path, num_steps=3, log_every=1, eval_every=3, checkpoint_every=3, keep_checkpoints=1)
  assert int(state.step) == 3


def test_resumes_a_checkpoint_that_holds_the_familys_former_name(tmp_path, monkeypatch):
  # As a CFI run resumes from checkpoints that say 'isfuse': here 'linear' plays the former name of 'other'.
  _train(tmp_path / "split", num_steps=2)
  monkeypatch.setitem(checkpoints.FORMER_MODEL_NAMES, "linear", "other")
  resumed = _train(tmp_path / "split", num_steps=4, task_cls=linear_task.OtherTask)
  _assert_trees_equal(resumed, _train(tmp_path / "straight", num_steps=4))
  assert checkpoints.restore_config(tmp_path / "split" / "checkpoints", step=2)["model"] == "other"


def test_config_differences_lists_added_and_removed_fields():
  current = {"model": "m", "process_count": 1, "experiment": {"a": {"b": 1}, "num_steps": 5}}
  saved = {"model": "m", "process_count": 2, "experiment": {"a": {"c": 1}, "num_steps": 9}}
  assert trainer.config_differences(saved, current) == [
      "process_count: checkpoint 2, now 1", "a.b: checkpoint '<absent>', now 1", "a.c: checkpoint 1, now '<absent>'"]
  assert trainer.config_differences({"model": "m"}, current)[0].startswith("the checkpoint has no training config")


def test_task_declares_its_own_resumable_fields():
  current = {"model": "m", "process_count": 1, "experiment": {"view_batching": "loop", "a": {"b": 1}}}
  saved = {"model": "m", "process_count": 1, "experiment": {"view_batching": "vmap", "a": {"b": 2}}}
  assert trainer.config_differences(saved, current) == [
      "a.b: checkpoint 2, now 1", "view_batching: checkpoint 'vmap', now 'loop'"]
  cfi = type("CFILike", (linear_task.LinearTask,), {"resumable_fields": frozenset({"view_batching"})})
  resumable = trainer.resumable_fields(cfi(None))
  assert resumable == trainer.RESUMABLE_FIELDS | {"view_batching"}
  assert trainer.config_differences(saved, current, resumable) == ["a.b: checkpoint 2, now 1"]
  assert trainer.resumable_fields(linear_task.LinearTask(None)) == trainer.RESUMABLE_FIELDS


def test_fields_added_later_take_their_former_behaviour_in_older_checkpoints():
  older = {"model": "m", "process_count": 1, "experiment": {"seed": 0}}
  now = lambda mode: {"model": "m", "process_count": 1, "experiment": {"seed": 0, "running_stats": mode}}
  added = {"running_stats": "all_views"}
  assert trainer.config_differences(older, now("all_views"), added_field_defaults=added) == []
  assert trainer.config_differences(older, now("clean_view"), added_field_defaults=added) == [
      "running_stats: checkpoint 'all_views', now 'clean_view'"]
  assert trainer.config_differences(older, now("all_views")) == [
      "running_stats: checkpoint '<absent>', now 'all_views'"]


def test_writes_logs_eval_images_and_tensorboard(tmp_path):
  _train(tmp_path, num_steps=4)
  _train(tmp_path, num_steps=2)  # No-op resume at the end: the logs stay as they are.
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in records if r["split"] == "train"]
  evals = [r for r in records if r["split"] == "eval"]
  assert [r["step"] for r in train] == [2, 4] and [r["step"] for r in evals] == [2, 4]
  assert all(set(r) == {"step", "split", "loss", "grad_norm", "steps_per_sec"} for r in train)
  assert evals[-1]["w_error"] >= 0 and (tmp_path / evals[-1]["image"]).is_file()
  assert evals[-1]["undefined"] is None and "NaN" not in (tmp_path / "metrics.jsonl").read_text()
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_resume_drops_log_records_of_the_interrupted_tail(tmp_path):
  _train(tmp_path, num_steps=4, checkpoint_every=2)
  # Pretend the run died after logging step 4 but before checkpointing it.
  shutil.rmtree(tmp_path / "checkpoints" / "4")
  _train(tmp_path, num_steps=4, checkpoint_every=2)
  steps = [(r["split"], r["step"]) for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())]
  assert steps == [("train", 2), ("eval", 2), ("train", 4), ("eval", 4)]


def test_rejects_batch_that_does_not_split_over_devices(tmp_path):
  with pytest.raises(ValueError, match="batch_size 6 must divide by the 8 devices"):
    _train(tmp_path, batch_size=6)


def test_registry_names_unknown_tasks():
  with pytest.raises(ValueError, match=r"Unknown config.task 'nope'; known tasks: cfi, dfc"):
    tasks.make_task(linear_task.get_config(task="nope"))


# Runs launch.train as its binary does (cli.run), with the linear task registered, and dumps this process's final
# parameters.
_TRAIN_SCRIPT = """
import sys
sys.path.insert(0, "tests")
import jax
import jax.numpy as jnp
import numpy as np
from launch import cli, tasks, train, trainer

tasks.register_task("linear", "linear_task")
train_and_evaluate = trainer.train_and_evaluate

def train_and_dump(config, workdir):
  state = train_and_evaluate(config, workdir)
  np.savez(f"{workdir}/params_{jax.process_index()}.npz", step=trainer.local_copy(state.step),
           **trainer.local_copy(state.params))
  return state

trainer.train_and_evaluate = train_and_dump
sys.argv[0] = "train"
cli.run(train.main)
"""

_ENV = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")


def test_train_binary_refuses_mismatched_checkpoint_with_message(repo_root, tmp_path):
  _train(tmp_path, num_steps=2)
  result = subprocess.run([sys.executable, "-c", _TRAIN_SCRIPT, "--config=tests/linear_task.py",
                           f"--workdir={tmp_path}", "--config.learning_rate=0.5"],
                          cwd=repo_root, env=_ENV, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert "Error: Refusing to resume" in result.stderr and "learning_rate: checkpoint 0.1, now 0.5" in result.stderr
  assert "Traceback" not in result.stderr


@pytest.mark.parametrize("config, message", [
    # Raised by get_config while absl parses the flags, before main.
    ("launch/configs/cfi.py:smoke,bogus", "Error: launch/configs/cfi.py:smoke,bogus: need one or more of smoke, "),
    ("launch/configs/dfc.py:bogus",
     "Error: launch/configs/dfc.py:bogus: need one or more of smoke, demo, unsupervised, paper, "),
    ("launch/configs/dfc.py:unsupervised",
     "Error: launch/configs/dfc.py:unsupervised: unsupervised changes the demo model; put demo before it"),
    ("launch/configs/nope.py:smoke", "Error: --config: the config file cannot be loaded ([Errno 2] No such file"),
])
def test_train_binary_names_a_bad_config_argument_in_one_line(repo_root, tmp_path, config, message):
  result = subprocess.run([sys.executable, "-m", "launch.train", f"--config={config}", f"--workdir={tmp_path}"],
                          cwd=repo_root, env=_ENV, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
  assert len(errors) == 1 and errors[0].startswith(message), result.stderr
  assert "Traceback" not in result.stderr


def test_two_process_distributed_run_agrees(repo_root, tmp_path):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  processes = [
      subprocess.Popen([sys.executable, "-c", _TRAIN_SCRIPT, "--config=tests/linear_task.py",
                        f"--workdir={tmp_path}", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                        f"--process_id={pid}"],
                       cwd=repo_root, env=_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
      for pid in (0, 1)]
  for process in processes:
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-5000:]
  dumps = [np.load(tmp_path / f"params_{pid}.npz") for pid in (0, 1)]
  num_steps = linear_task.get_config().num_steps
  assert int(dumps[0]["step"]) == int(dumps[1]["step"]) == num_steps
  np.testing.assert_array_equal(dumps[0]["w"], dumps[1]["w"])
  # Each process checkpointed the state of its own data iterator.
  assert sorted(p.name for p in (tmp_path / "checkpoints" / str(num_steps) / "data").glob("process_*")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
