"""Accelerator readiness on a CPU-only machine: the train step is built for the devices it is compiled for, and
(with libtpu installed, the `tpu` extra) both tasks' smoke train steps and the fusion program compile for a TPU v5e
chip ahead of time. The Colab notebooks' TPU path is what the compile test guards."""
import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from launch import tasks
from launch import trainer
from launch.configs import cfi as cfi_configs
from launch.configs import dfc as dfc_configs
import linear_task


class _PlatformRecordingTask(linear_task.LinearTask):
  platforms: list

  def train_step_for(self, platform):
    self.platforms.append(platform)
    return self.train_step


def test_train_step_is_specialised_to_the_meshs_platform():
  task = _PlatformRecordingTask(linear_task.get_config())
  task.platforms = []
  mesh = trainer.make_mesh(jax.devices()[:2])
  state = trainer.make_init_state(task, mesh)(jax.random.PRNGKey(0), next(iter(task.train_dataset(
      seed=0, process_index=0, process_count=1))))
  batch = jax.tree.map(np.asarray, next(iter(task.train_dataset(seed=0, process_index=0, process_count=1))))
  trainer.make_train_step(task, mesh)(state, trainer.shard_batch(batch, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(trainer.DATA_AXIS))), jax.random.PRNGKey(1))
  assert task.platforms == ['cpu']


@pytest.mark.parametrize('platform, expected', [('cpu', 'loop'), ('tpu', 'vmap'), ('gpu', 'vmap')])
def test_cfi_auto_view_batching_follows_the_platform(platform, expected):
  config = cfi_configs.get_config('smoke')
  config.view_batching = 'auto'
  assert tasks.make_task(config).train_step_for(platform).keywords['view_batching'] == expected


@pytest.fixture(name='aot_report')
def _aot_report(repo_root):
  sys.path.insert(0, str(repo_root / 'benchmarks'))
  try:
    import aot_report  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  return aot_report


def test_batch_spec_matches_the_training_pipelines(aot_report, tmp_path):
  cached = dfc_configs.get_config('smoke')
  cached.data.update(render_cache=True, render_cache_dir=str(tmp_path))  # uint8 images
  for config in (cfi_configs.get_config('smoke'), dfc_configs.get_config('smoke'), cached):
    batch = next(iter(tasks.make_task(config).train_dataset(seed=0, process_index=0, process_count=1)))
    spec = aot_report.batch_spec(config)
    assert {k: (v.shape, v.dtype) for k, v in spec.items()} == {k: (v.shape, v.dtype) for k, v in batch.items()}


def test_roofline_peak_follows_dtype_and_matmul_precision(aot_report):
  compute_seconds = lambda target, dtype, precision: aot_report.add_roofline(
      {'target': target, 'fits': True, 'flops': 1e15, 'bytes_accessed': 0.0}, dtype, precision
  )['estimate_compute_seconds']
  v5e = aot_report.TARGETS['tpu-v5e'].peak_bf16
  # A TPU computes a float32 product as 1 (default), 3 (high) or 6 (highest) bfloat16 passes; bfloat16 as one.
  assert compute_seconds('tpu-v5e', 'float32', 'default') == pytest.approx(1e15 / v5e)
  assert compute_seconds('tpu-v5e', 'float32', 'tensorfloat32') == pytest.approx(3e15 / v5e)
  assert compute_seconds('tpu-v5e', 'float32', 'highest') == pytest.approx(6e15 / v5e)
  assert compute_seconds('tpu-v5e', 'bfloat16', 'highest') == pytest.approx(1e15 / v5e)
  # An H100 runs float32 on TF32 tensor cores unless 'highest' (plain FP32, 67 TFLOP/s).
  assert compute_seconds('gpu-h100', 'float32', 'high') == compute_seconds('gpu-h100', 'float32', 'default')
  assert compute_seconds('gpu-h100', 'float32', 'highest') == pytest.approx(1e15 / 67e12)


# One process compiles all three (libtpu starts once); JAX_PLATFORMS=cpu so that no TPU is opened.
_COMPILE_FOR_TPU = '''
import json, sys
sys.path.insert(0, "benchmarks")
import aot_report
from launch.configs import cfi, dfc
reports = [aot_report.run(cfi.get_config("smoke"), "tpu-v5e", "train"),
           aot_report.run(dfc.get_config("smoke"), "tpu-v5e", "train"),
           aot_report.run(cfi.get_config("smoke"), "tpu-v5e", "fuse", fuse_size=(96, 128))]
print(json.dumps(reports))
'''


@pytest.mark.skipif(importlib.util.find_spec('libtpu') is None, reason="libtpu not installed (pip install -e '.[tpu]')")
def test_smoke_steps_and_fusion_compile_for_a_tpu(repo_root):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TPU_SKIP_MDS_QUERY': '1', 'ALLOW_MULTIPLE_LIBTPU_LOAD': '1'}
  result = subprocess.run([sys.executable, '-c', _COMPILE_FOR_TPU], cwd=repo_root, env=env, capture_output=True,
                          text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-5000:]
  reports = json.loads(result.stdout.splitlines()[-1])
  for report in reports:
    assert report['fits'], report
    # A smoke program may need no scratch at all (temp 0); its arguments and FLOPs show the analysis was read.
    assert report['argument_bytes'] > 0 and report['temp_bytes'] < report['hbm_bytes'] and report['flops'] > 0, report
    assert not report['xla_remat'], report
