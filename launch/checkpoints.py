"""The project's checkpoint layout: an orbax CheckpointManager directory whose steps hold Composite items
'state' (a pytree with at least 'params' and 'batch_stats'), 'config' (JSON with 'model' and 'model_config') and,
for training checkpoints, 'data' (the grain iterator state).

A step whose files cannot be read (a write cut short by preemption or a full disk) is skipped when the latest step
is asked for: `restore_newest` warns once naming the step and what failed, and uses the newest readable step.
"""
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, TypeVar

from absl import logging
import grain
import jax
import orbax.checkpoint as ocp

from input_pipeline import errors

PathLike = str | os.PathLike
MODEL_KEYS = ('params', 'batch_stats')
T = TypeVar('T')
# {a family's former name: its name now}: checkpoints written before a rename still load and resume.
FORMER_MODEL_NAMES = {'isfuse': 'cfi'}


class CheckpointError(errors.ProjectError, ValueError):
  """A checkpoint directory, step or config that cannot be used; the message names the directory."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
  """The directory does not exist or holds no checkpoint steps."""


class CheckpointExistsError(CheckpointError, FileExistsError):
  """The directory already holds checkpoint steps (an inference checkpoint never overwrites them)."""


class UnreadableStep(NamedTuple):
  step: int
  reason: str  # What failed, one line: '<ExceptionType>: <message>'.


def _reason(error: Exception) -> str:
  lines = str(error).strip().splitlines()
  message = lines[0] if lines else ''
  return f'{type(error).__name__}: {message[:300]}'


def restore_newest(directory: PathLike, steps: list[int], restore: Callable[[int], T]
                   ) -> tuple[int, T, list[UnreadableStep]]:
  """Calls restore(step) from the newest of `steps` down until one succeeds.

  Returns (step, restore(step), the newer steps that could not be read). Each unreadable step is logged once as a
  warning naming it and what failed. `restore` must only read: exceptions it raises mean "this step is unreadable",
  except ProjectErrors (e.g. a config that forbids resuming), which propagate.

  Raises:
    CheckpointError: no step could be read.
  """
  unreadable = []
  for step in sorted(steps, reverse=True):
    try:
      return step, restore(step), unreadable
    except errors.ProjectError:
      raise
    except Exception as e:  # orbax/tensorstore/json raise many types for truncated or missing files.
      unreadable.append(UnreadableStep(step, _reason(e)))
      logging.warning('Checkpoint step %d in %s is unreadable (%s); trying the step before it.', step, directory,
                      unreadable[-1].reason)
  raise CheckpointError(f'{directory}: no checkpoint step can be read (' +
                        '; '.join(f'step {u.step}: {u.reason}' for u in unreadable) +
                        '); move the broken steps away or use another directory')


def _check_config(config: Mapping[str, Any]) -> None:
  missing = [k for k in ('model', 'model_config') if k not in config]
  if missing:
    raise CheckpointError(f'checkpoint config needs keys {missing}; got {sorted(config)}')


def with_current_model_name(config: Mapping[str, Any]) -> dict:
  """A saved checkpoint config with its 'model' under the family's current name (older CFI ones say 'isfuse')."""
  model = config.get('model')
  return dict(config, model=FORMER_MODEL_NAMES.get(model, model)) if 'model' in config else dict(config)


def save_inference_checkpoint(directory: PathLike, variables: Mapping[str, Any], config: Mapping[str, Any],
                              step: int = 0) -> pathlib.Path:
  """Writes model variables ({'params','batch_stats'}) and the config as one checkpoint step; returns its path.

  Raises:
    CheckpointExistsError: `directory` already holds checkpoint steps (never overwritten).
  """
  _check_config(config)
  directory = pathlib.Path(directory).absolute()
  state = {k: variables.get(k, {}) for k in MODEL_KEYS}
  with ocp.CheckpointManager(directory) as manager:
    if manager.all_steps():
      raise CheckpointExistsError(f'{directory} already holds checkpoint steps {manager.all_steps()}; '
                            'choose an empty directory')
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                               config=ocp.args.JsonSave(dict(config))))
    manager.wait_until_finished()
  return directory / str(step)


def _manager(directory: pathlib.Path) -> ocp.CheckpointManager:
  # PyTreeCheckpointHandler (on-disk compatible with StandardSave) allows a partial restore of 'state', so
  # training checkpoints restore without knowing the optimizer state's structure.
  # The 'data' handler is never used to restore here; naming it keeps orbax from warning about an unknown item.
  return ocp.CheckpointManager(directory, item_handlers={'state': ocp.PyTreeCheckpointHandler(),
                                                         'config': ocp.JsonCheckpointHandler(),
                                                         'data': grain.checkpoint.CheckpointHandler()})


def _restore(directory: PathLike, step: int | None, restore: Callable[[ocp.CheckpointManager, int], T]) -> T:
  """restore(manager, step) for `step`, or for the newest readable step when `step` is None."""
  directory = pathlib.Path(directory).expanduser().absolute()
  if not directory.is_dir():
    raise CheckpointNotFoundError(f'checkpoint directory {directory} does not exist')
  with _manager(directory) as manager:
    steps = list(manager.all_steps())
    if not steps:
      raise CheckpointNotFoundError(f'{directory} holds no checkpoint steps (is it an orbax CheckpointManager '
                                    'directory, e.g. WORKDIR/checkpoints?)')
    if step is None:
      return restore_newest(directory, steps, lambda s: restore(manager, s))[1]
    if step not in steps:
      raise CheckpointError(f'{directory} has no step {step}; available steps: {sorted(steps)}')
    try:
      return restore(manager, step)
    except errors.ProjectError:
      raise
    except Exception as e:  # As in restore_newest: the step's files are truncated or missing.
      raise CheckpointError(f'{directory}: checkpoint step {step} is unreadable ({_reason(e)}); leave out the step '
                            'to use the newest readable one') from e


def restore_config(directory: PathLike, step: int | None = None) -> dict:
  """The JSON 'config' item of a checkpoint step (the newest readable one by default)."""
  return _restore(directory, step, lambda manager, s: with_current_model_name(manager.restore(
      s, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config']))


def restore_model_variables(directory: PathLike, step: int | None = None) -> tuple[dict, dict]:
  """Restores ({'params', 'batch_stats'}, config) from a checkpoint step (the newest readable one by default).

  Only the model variables are read from 'state' (a partial restore), so training checkpoints with optimizer state
  or a 'data' item restore without the optimizer. Arrays land on the first local device.
  """
  return _restore(directory, step, lambda manager, s: _restore_variables(manager, pathlib.Path(directory), s))


def _restore_variables(manager: ocp.CheckpointManager, directory: pathlib.Path, step: int) -> tuple[dict, dict]:
  metadata = manager.item_metadata(step)['state']
  tree = metadata.tree if hasattr(metadata, 'tree') else metadata
  if not isinstance(tree, Mapping) or 'params' not in tree:
    raise CheckpointError(f'{directory}/{step}: checkpoint state has no top-level "params" '
                          f'(found {sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__})')
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = {k: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree[k])
            for k in MODEL_KEYS if k in tree}
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                   partial_restore=True),
      config=ocp.args.JsonRestore()))
  state, config = restored['state'], with_current_model_name(restored['config'])
  _check_config(config)
  return {'params': state['params'], 'batch_stats': state.get('batch_stats', {})}, config
