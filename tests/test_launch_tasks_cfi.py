"""The CFI task in the shared loop: sharded vs single-device steps, and launch.train end to end in subprocesses
(smoke run -> launch.fuse / launch.evaluate_cfi, SIGKILL + exact resume)."""
import copy
import dataclasses
import functools
import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import time

import flax.traverse_util
import jax
import numpy as np
from PIL import Image
import pytest

from cfi_jax import losses
from input_pipeline import errors
from input_pipeline import fusion_data
from launch import checkpoints
from launch import tasks
from launch import trainer
from launch.configs import cfi as cfi_configs
from launch.tasks import cfi as cfi_task

_SMOKE = "--config=launch/configs/cfi.py:smoke"
_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory) -> pathlib.Path:
  """A persistent XLA cache shared by this module's subprocesses, so identical programs compile once."""
  return tmp_path_factory.mktemp("xla_cache")


def _env(compile_cache: pathlib.Path) -> dict[str, str]:
  env = dict(os.environ)
  env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(compile_cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             XLA_FLAGS="--xla_force_host_platform_device_count=1")
  return env


def _run(args: list[str], repo_root: pathlib.Path, env: dict[str, str]) -> subprocess.CompletedProcess:
  result = subprocess.run([sys.executable, *args], cwd=repo_root, env=env, capture_output=True, text=True,
                          timeout=_TIMEOUT_S)
  assert result.returncode == 0, f"{args} failed:\n{result.stderr[-5000:]}"
  return result


def _model_variables(workdir: pathlib.Path):
  variables, _ = checkpoints.restore_model_variables(workdir / "checkpoints")
  return jax.tree.map(np.asarray, variables)


def test_sharded_step_matches_single_device():
  config = cfi_configs.get_config("smoke")
  # The vmapped views. Any other compiled program (looped views, YNNPACK off) may legitimately differ here: this
  # batch has 2x2 max-pool windows whose top two values lie 2e-8..2e-7 apart (leaky ReLU squeezes negative
  # activations 100x), below float32 noise, so which element gets the window's gradient depends on rounding and
  # moves a few kernels' gradients by up to 1.7%. Both are valid subgradients; a float64 run picks one of them.
  config.view_batching = "vmap"
  task = tasks.make_task(config)
  batch = next(iter(task.train_dataset(seed=0, process_index=0, process_count=1)))
  state = jax.tree.map(np.asarray, jax.jit(task.init_state)(jax.random.PRNGKey(0), batch))
  key = jax.random.PRNGKey(1)
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = trainer.make_mesh(devices)
    placed = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    global_batch = trainer.shard_batch(batch, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
    assert len(global_batch["vis"].sharding.device_set) == len(devices)
    new_state, metrics = trainer.make_train_step(task, mesh)(placed, global_batch, key)
    results.append(jax.tree.map(np.asarray, trainer.local_copy(
        {"params": flax.traverse_util.flatten_dict(new_state.params), "batch_stats": new_state.batch_stats,
         "metrics": metrics})))
  one, eight = results
  close = functools.partial(np.testing.assert_allclose, atol=1e-6)
  jax.tree.map(functools.partial(close, rtol=1e-6), one["batch_stats"], eight["batch_stats"])
  # Some gradients are zero in exact arithmetic (conv biases ahead of BatchNorm, attention key biases under
  # softmax); their float rounding noise depends on the reduction order and is amplified by BatchNorm on the all-zero
  # input of a dropped modality. It dominates the global gradient norm at step 0 (~9e7, measured; hence its looser
  # bound: 1.7e-5 apart once, far less than a wrong cross-device reduction would move it), and Adam's first step,
  # lr * g / |g|, turns it into +-lr on those biases (so biases other than BatchNorm's are left out). Kernels,
  # BatchNorm parameters and statistics, and every loss term must agree.
  for name, value in one["metrics"].items():
    close(value, eight["metrics"][name], rtol=1e-3 if name == "grad_norm" else 1e-6, err_msg=name)
  # Adam's first step is nearly lr * sign(g), so a gradient entry near zero whose rounding depends on the reduction
  # order (a flipped max-pool tie, see above) moves by up to two steps; which entries flip varies with the CPU's
  # vector code and thread split. So a few entries may differ, by at most 2 lr, while a sharding bug (a wrong or
  # missing gradient reduction) flips the sign of a large share of them.
  learning_rate = config.optimizer.learning_rate
  differing, total = 0, 0
  for path, value in one["params"].items():
    if path[-1] != "bias" or path[-2] == "bn":
      off = ~np.isclose(value, eight["params"][path], rtol=1e-6, atol=1e-6)
      differing, total = differing + off.sum(), total + off.size
      assert np.abs(value - eight["params"][path])[off].max(initial=0) <= 2 * learning_rate * (1 + 1e-3), str(path)
  assert differing <= 0.01 * total, f"{differing} of {total} kernel and BatchNorm entries differ"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, repo_root, compile_cache) -> pathlib.Path:
  """Workdir of an uninterrupted `launch.train` smoke run."""
  workdir = tmp_path_factory.mktemp("smoke")
  _run(["-m", "launch.train", _SMOKE, f"--workdir={workdir}"], repo_root, _env(compile_cache))
  return workdir


def test_smoke_run_writes_checkpoints_logs_and_eval(smoke_run):
  config = cfi_configs.get_config("smoke")
  assert (smoke_run / "checkpoints" / str(config.num_steps)).is_dir()
  records = [json.loads(line) for line in (smoke_run / "metrics.jsonl").read_text().splitlines()]
  evals = [r for r in records if r["split"] == "eval"]
  assert [r["step"] for r in evals] == [config.num_steps]
  assert 0 < evals[0]["EN"] <= 8 and (smoke_run / evals[0]["image"]).is_file()
  assert [r["step"] for r in records if r["split"] == "train"] == list(
      range(config.log_every, config.num_steps + 1, config.log_every))
  variables, saved_config = checkpoints.restore_model_variables(smoke_run / "checkpoints")
  assert saved_config["model"] == "cfi" and saved_config["model_config"]["features"] == config.model.features
  assert jax.tree.leaves(variables["batch_stats"])


def test_fuse_and_evaluate_on_trained_checkpoint(smoke_run, repo_root, compile_cache, tmp_path):
  samples, checkpoint = smoke_run / "samples", smoke_run / "checkpoints"
  out = tmp_path / "fused.png"
  _run(["-m", "launch.fuse", f"--checkpoint={checkpoint}", f"--ir={samples / 'ir/0.png'}",
        f"--vis={samples / 'vi/0.png'}", f"--out={out}"], repo_root, _env(compile_cache))
  fused, ir = np.asarray(Image.open(out)), np.asarray(Image.open(samples / "ir/0.png"))
  assert fused.shape == ir.shape and fused.dtype == np.uint8 and fused.std() > 0

  _run(["-m", "launch.evaluate_cfi", f"--checkpoint={checkpoint}", f"--ir_dir={samples / 'ir'}",
        f"--vis_dir={samples / 'vi'}", f"--output_dir={tmp_path / 'eval'}"], repo_root, _env(compile_cache))
  assert "EN" in (tmp_path / "eval" / "summary.md").read_text()
  assert sorted(p.name for p in (tmp_path / "eval" / "fused").iterdir()) == ["0.png", "1.png"]


def test_sigkill_and_resume_is_bit_identical(smoke_run, repo_root, compile_cache, tmp_path):
  config = cfi_configs.get_config("smoke")
  # Any checkpointed step before the last must do; which one is drawn afresh each run.
  kill_after = random.choice(range(config.checkpoint_every, config.num_steps, config.checkpoint_every))
  args = [sys.executable, "-m", "launch.train", _SMOKE, f"--workdir={tmp_path}"]
  process = subprocess.Popen(args, cwd=repo_root, env=_env(compile_cache), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + _TIMEOUT_S
  while not (tmp_path / "checkpoints" / str(kill_after)).is_dir():
    assert process.poll() is None, f"training ended before step {kill_after}:\n{process.stderr.read()[-5000:]}"
    assert time.monotonic() < deadline
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  process.communicate()
  assert process.returncode == -signal.SIGKILL, f"the run finished before it was killed after step {kill_after}"

  _run(args[1:], repo_root, _env(compile_cache))
  resumed, straight = _model_variables(tmp_path), _model_variables(smoke_run)
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)


def test_config_holds_values_in_step_with_the_library_defaults():
  config = cfi_configs.get_config("smoke")
  defaults = losses.LossConfig()
  expected_loss = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(defaults)
                   if f.name not in ("use_inv", "use_nec", "complementary", "random", "dropout")}
  expected_loss["holes"] = dataclasses.asdict(defaults.holes)
  assert config.loss.to_dict() == expected_loss
  assert set(cfi_configs._data_defaults()) == set(fusion_data.default_data_config())
  assert cfi_configs._data_defaults().to_dict() == fusion_data.default_data_config().to_dict()
  assert set(cfi_configs.ABLATIONS) == set(losses.ABLATIONS)


def test_config_variants_combine_and_the_ablation_says_what_it_changes():
  paper_smoke = cfi_configs.get_config("paper,smoke")
  assert paper_smoke.data.name == "folder" and paper_smoke.num_steps == cfi_configs.get_config("smoke").num_steps
  assert cfi_configs.get_config("smoke").data.name == "synthetic"
  no_cfi = cfi_configs.get_config("smoke,no_cfi")
  assert no_cfi.ablation == "no_cfi" and no_cfi.model.use_cfi is False
  # What trains is what the saved config says.
  assert tasks.make_task(no_cfi).model_config()["use_cfi"] is False
  assert cfi_configs.get_config("smoke,no_inv").model.use_cfi is True
  # The ablation set on its own (--config.ablation=no_cfi): the saved experiment says what trains too.
  overridden = cfi_configs.get_config("smoke")
  overridden.lock()  # as launch.train's config flag is
  overridden.ablation = "no_cfi"
  saved = trainer.checkpoint_config(tasks.make_task(overridden), overridden)
  assert saved["model_config"]["use_cfi"] is False and saved["experiment"]["model"]["use_cfi"] is False
  with pytest.raises(errors.ConfigArgumentError, match="unknown: bogus"):
    cfi_configs.get_config("smoke,bogus")
  with pytest.raises(errors.ConfigArgumentError, match="need one or more of smoke, demo, paper"):
    cfi_configs.get_config("no_cfi")


def test_checkpoints_from_before_the_intensity_gradient_and_clipping_fields_resume_with_the_release_values():
  now = {"model": "m", "process_count": 1, "experiment": cfi_configs.get_config("smoke").to_dict()}
  older = copy.deepcopy(now)
  del older["experiment"]["loss"]["intensity"], older["experiment"]["optimizer"]["clip_grad_norm"]
  del older["experiment"]["loss"]["gradient"]
  added = tasks.make_task(cfi_configs.get_config("smoke")).added_field_defaults
  assert trainer.config_differences(older, now, added_field_defaults=added) == []
  demo = {"model": "m", "process_count": 1, "experiment": cfi_configs.get_config("demo").to_dict()}
  older_demo = copy.deepcopy(demo)
  del older_demo["experiment"]["loss"]["intensity"], older_demo["experiment"]["optimizer"]["clip_grad_norm"]
  differences = set(trainer.config_differences(older_demo, demo, added_field_defaults=added))
  assert {"loss.intensity: checkpoint 'release', now 'max'",
          "optimizer.clip_grad_norm: checkpoint 0.0, now 1.0"} <= differences


def test_the_demos_fidelity_loss_is_minimised_by_the_per_pixel_maximum_and_the_release_one_is_not():
  """The demo's L_f has the maximum as its minimiser, which beats the average on every README metric
  (benchmarks/cfi_lf_optimum.py); with the release's gradient term it asks for more texture than the maximum has."""
  pair = fusion_data.make_eval_pairs(cfi_configs.get_config("demo").data)[0]
  vis, ir = (jax.numpy.asarray(pair[k])[None, ..., None] for k in ("vis", "ir"))
  brighter = jax.numpy.maximum(vis, ir)
  demo = cfi_task.loss_config_from(cfi_configs.get_config("demo"))[0]
  assert float(losses.fidelity_loss(brighter, vis, ir, demo.lambda_grad, demo.intensity, demo.gradient)[0]) < 1e-6
  _, release_terms = losses.fidelity_loss(brighter, vis, ir, demo.lambda_grad, demo.intensity, "release")
  assert float(release_terms["grad"]) > 0.01


def test_demo_writes_eight_held_out_samples_of_at_least_192_pixels(tmp_path):
  """The README fuses and scores the demo's held-out samples: enough of them, large enough to judge a fusion by."""
  tasks.make_task(cfi_configs.get_config("demo")).write_samples(tmp_path)
  for sub in ("ir", "vi"):
    files = sorted((tmp_path / sub).glob("*.png"))
    assert len(files) >= 8, sub
    assert all(min(Image.open(f).size) >= 192 for f in files), sub
