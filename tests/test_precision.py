"""Matmul precision: fusion, transfer and the evaluation metrics run their convolutions and products at 'highest'
(what an accelerator would otherwise round to bfloat16 or TF32), and the train step at config.matmul_precision.

Checked on the lowered programs (StableHLO names the precision of every convolution and dot_general), since a CPU
computes float32 whatever the precision says."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfi_jax import bucketed
from cfi_jax import inference
from cfi_jax.model import ISFuse
from dfc_jax import metrics as dfc_metrics
from dfc_jax import model as dfc_model
from dfc_jax import steps as dfc_steps
from input_pipeline import errors
from launch import trainer
from cfi_test_utils import random_variables
import linear_task

_PRODUCTS = ('stablehlo.convolution', 'stablehlo.dot_general')


def _products(lowered) -> list[str]:
  """The convolution and dot_general lines of a lowered program."""
  lines = [line for line in lowered.as_text().splitlines() if any(op in line for op in _PRODUCTS)]
  assert lines, 'the program has no convolution or dot_general'
  return lines


def _all_highest(lowered) -> bool:
  return all('HIGHEST' in line for line in _products(lowered))


def test_fusion_programs_run_at_highest():
  model = ISFuse(features=4)
  image = jnp.zeros((1, 16, 16, 1))
  variables = random_variables(model, seed=0)
  assert _all_highest(inference._fuse.lower(model, variables, image, image))  # pylint: disable=protected-access
  folded = bucketed.fold_batchnorm(variables)
  assert _all_highest(jax.jit(bucketed.forward, static_argnums=0).lower(model, folded, image, image,
                                                                       jnp.array([[13, 16]])))


def test_dfc_transfer_and_metrics_run_at_highest():
  generator = dfc_model.DFCNet(num_keypoints=2, pose_widths=(4, 4), widths=(4, 4))
  image = jnp.zeros((1, 32, 32, 3))
  params = jax.eval_shape(generator.init, jax.random.PRNGKey(0), image, image)['params']
  assert _all_highest(jax.jit(functools.partial(dfc_steps.transfer, generator=generator)).lower(params, image, image))
  assert _all_highest(jax.jit(functools.partial(dfc_steps.keypoints, generator=generator)).lower(params, image))
  assert _all_highest(jax.jit(dfc_metrics.ssim).lower(image, image))
  lpips_params = jax.eval_shape(dfc_metrics.lpips_alex_params)
  assert _all_highest(jax.jit(dfc_metrics.lpips).lower(lpips_params, image, image))


def _lowered_train_step(matmul_precision: str):
  task = linear_task.LinearTask(linear_task.get_config())
  mesh = trainer.make_mesh(jax.devices()[:1])
  batch = jax.tree.map(np.asarray, next(iter(task.train_dataset(seed=0, process_index=0, process_count=1))))
  state = trainer.make_init_state(task, mesh)(jax.random.PRNGKey(0), batch)
  step = trainer.make_train_step(task, mesh, matmul_precision)
  return step, state, batch


@pytest.mark.parametrize('precision', ['default', 'high', 'highest'])
def test_train_step_runs_at_the_configured_precision(precision):
  step, state, batch = _lowered_train_step(precision)
  products = _products(step.lower(state, batch, jax.random.PRNGKey(1)))
  marker = precision.upper()
  assert all(f'precision = [{marker}, {marker}]' in line for line in products), products


def test_train_step_precision_changes_nothing_on_cpu():
  results = []
  for precision in ('default', 'highest'):
    step, state, batch = _lowered_train_step(precision)
    new_state, metrics = step(state, batch, jax.random.PRNGKey(1))
    results.append(jax.tree.map(np.asarray, (new_state.params, metrics)))
  jax.tree.map(np.testing.assert_array_equal, *results)


def test_unknown_precision_is_refused(tmp_path):
  config = linear_task.get_config(matmul_precision='fast')
  with pytest.raises(errors.ConfigError, match=r"config.matmul_precision is 'fast'; use one of default, high"):
    trainer.train_and_evaluate(config, tmp_path, task=linear_task.LinearTask(config))
