"""The project's checkpoint layout: an orbax CheckpointManager directory whose steps hold Composite items
'state' (a pytree with at least 'params' and 'batch_stats'), 'config' (JSON with 'model' and 'model_config') and,
for training checkpoints, 'data' (the grain iterator state).
"""
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp

PathLike = str | os.PathLike
MODEL_KEYS = ('params', 'batch_stats')


def _check_config(config: Mapping[str, Any]) -> None:
  missing = [k for k in ('model', 'model_config') if k not in config]
  if missing:
    raise ValueError(f'checkpoint config needs keys {missing}; got {sorted(config)}')


def save_inference_checkpoint(directory: PathLike, variables: Mapping[str, Any], config: Mapping[str, Any],
                              step: int = 0) -> pathlib.Path:
  """Writes model variables ({'params','batch_stats'}) and the config as one checkpoint step; returns its path.

  Raises:
    FileExistsError: `directory` already holds checkpoint steps (never overwritten).
  """
  _check_config(config)
  directory = pathlib.Path(directory).absolute()
  state = {k: variables.get(k, {}) for k in MODEL_KEYS}
  with ocp.CheckpointManager(directory) as manager:
    if manager.all_steps():
      raise FileExistsError(f'{directory} already holds checkpoint steps {manager.all_steps()}; '
                            'choose an empty directory')
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               config=ocp.args.JsonSave(dict(config))))
    manager.wait_until_finished()
  return directory / str(step)


def _manager(directory: pathlib.Path) -> ocp.CheckpointManager:
  # PyTreeCheckpointHandler (on-disk compatible with StandardSave) allows a partial restore of 'state', so
  # training checkpoints restore without knowing the optimizer state's structure.
  return ocp.CheckpointManager(directory, item_handlers={'state': ocp.PyTreeCheckpointHandler(),
                                                         'config': ocp.JsonCheckpointHandler()})


def restore_config(directory: PathLike, step: int | None = None) -> dict:
  """The JSON 'config' item of a checkpoint step (latest by default)."""
  directory, step = _resolve_step(directory, step)
  with _manager(directory) as manager:
    return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config']


def _resolve_step(directory: PathLike, step: int | None) -> tuple[pathlib.Path, int]:
  directory = pathlib.Path(directory).absolute()
  if not directory.is_dir():
    raise FileNotFoundError(f'checkpoint directory {directory} does not exist')
  with ocp.CheckpointManager(directory) as manager:
    steps = manager.all_steps()
  if not steps:
    raise FileNotFoundError(f'{directory} holds no checkpoint steps (is it an orbax CheckpointManager directory?)')
  if step is None:
    return directory, max(steps)
  if step not in steps:
    raise ValueError(f'{directory} has no step {step}; available steps: {sorted(steps)}')
  return directory, step


def restore_model_variables(directory: PathLike, step: int | None = None) -> tuple[dict, dict]:
  """Restores ({'params', 'batch_stats'}, config) from a checkpoint step (latest by default).

  Only the model variables are read from 'state' (a partial restore), so training checkpoints with optimizer state
  or a 'data' item restore without the optimizer. Arrays land on the first local device.
  """
  directory, step = _resolve_step(directory, step)
  with _manager(directory) as manager:
    metadata = manager.item_metadata(step)['state']
    tree = metadata.tree if hasattr(metadata, 'tree') else metadata
    if not isinstance(tree, Mapping) or 'params' not in tree:
      raise ValueError(f'{directory}/{step}: checkpoint state has no top-level "params" '
                       f'(found {sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__})')
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = {k: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree[k])
              for k in MODEL_KEYS if k in tree}
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                     partial_restore=True),
        config=ocp.args.JsonRestore()))
  state, config = restored['state'], restored['config']
  _check_config(config)
  return {'params': state['params'], 'batch_stats': state.get('batch_stats', {})}, config
