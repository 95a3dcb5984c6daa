"""The shared checkpoint layout: inference checkpoints and model-only restore of training checkpoints."""
import flax
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from launch import checkpoints

CONFIG = {'model': 'cfi', 'model_config': {'features': 8}}


def _variables(seed=0):
  rng = np.random.default_rng(seed)
  return {'params': {'conv': {'kernel': rng.random((3, 3, 1, 4), np.float32), 'bias': rng.random(4, np.float32)}},
          'batch_stats': {'bn': {'mean': rng.random(4, np.float32), 'var': rng.random(4, np.float32)}}}


@flax.struct.dataclass
class _TrainState:
  step: jax.Array
  params: dict
  batch_stats: dict
  opt_state: optax.OptState


def test_inference_checkpoint_round_trip(tmp_path):
  variables = _variables()
  checkpoints.save_inference_checkpoint(tmp_path / 'ckpt', variables, CONFIG)
  restored, config = checkpoints.restore_model_variables(tmp_path / 'ckpt')
  assert config == CONFIG
  jax.tree.map(np.testing.assert_array_equal, restored, variables)
  with pytest.raises(checkpoints.CheckpointExistsError, match='ckpt'):
    checkpoints.save_inference_checkpoint(tmp_path / 'ckpt', variables, CONFIG)


def test_model_without_batch_stats(tmp_path):
  checkpoints.save_inference_checkpoint(tmp_path, {'params': _variables()['params']}, CONFIG)
  restored, _ = checkpoints.restore_model_variables(tmp_path)
  assert restored['batch_stats'] == {}
  jax.tree.map(np.testing.assert_array_equal, restored['params'], _variables()['params'])


def test_restore_from_training_checkpoint_with_optimizer_and_data(tmp_path):
  mesh = jax.sharding.Mesh(jax.devices(), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  iterator = iter(grain.MapDataset.range(10).to_iter_dataset())
  next(iterator)
  with ocp.CheckpointManager(tmp_path) as manager:
    for step in (5, 10):
      variables = _variables(seed=step)
      state = _TrainState(step=jnp.asarray(step), params=variables['params'], batch_stats=variables['batch_stats'],
                          opt_state=optax.adam(1e-4).init(variables['params']))
      manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(jax.device_put(state, replicated)),
                                                 data=grain.checkpoint.CheckpointSave(iterator),
                                                 config=ocp.args.JsonSave(CONFIG)))
    manager.wait_until_finished()
  restored, config = checkpoints.restore_model_variables(tmp_path)  # Latest step.
  assert set(restored) == {'params', 'batch_stats'} and config == CONFIG
  jax.tree.map(np.testing.assert_array_equal, restored, _variables(seed=10))
  restored, _ = checkpoints.restore_model_variables(tmp_path, step=5)
  jax.tree.map(np.testing.assert_array_equal, restored, _variables(seed=5))
  with pytest.raises(checkpoints.CheckpointError, match=r'no step 7.*\[5, 10\]'):
    checkpoints.restore_model_variables(tmp_path, step=7)


def test_latest_restore_skips_an_unreadable_newest_step_and_leaves_it(tmp_path, caplog):
  with ocp.CheckpointManager(tmp_path) as manager:
    for step in (5, 10):
      manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_variables(seed=step)),
                                                 config=ocp.args.JsonSave(CONFIG)))
  for f in (tmp_path / '10').rglob('*'):
    if f.is_file():
      f.write_bytes(f.read_bytes()[:f.stat().st_size // 2])
  with caplog.at_level('WARNING', logger='absl'):
    restored, config = checkpoints.restore_model_variables(tmp_path)
  jax.tree.map(np.testing.assert_array_equal, restored, _variables(seed=5))
  assert config == CONFIG
  warnings = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING']
  assert len(warnings) == 1 and 'step 10' in warnings[0] and 'unreadable' in warnings[0]
  assert (tmp_path / '10').is_dir()  # Inference never moves or deletes anything.
  # Asking for that step by number still fails, naming it.
  with pytest.raises(checkpoints.CheckpointError, match=r'step 10 is unreadable \(\w+Error: '):
    checkpoints.restore_model_variables(tmp_path, step=10)


def test_restore_errors_name_the_directory(tmp_path):
  with pytest.raises(checkpoints.CheckpointNotFoundError, match='nowhere'):
    checkpoints.restore_model_variables(tmp_path / 'nowhere')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(checkpoints.CheckpointNotFoundError, match='empty.*no checkpoint steps'):
    checkpoints.restore_model_variables(tmp_path / 'empty')
  with pytest.raises(checkpoints.CheckpointError, match='model_config'):
    checkpoints.save_inference_checkpoint(tmp_path / 'bad', _variables(), {'model': 'cfi'})
