"""Converts the authors' PyTorch ISFuse state dict (numpy arrays) into Flax {'params', 'batch_stats'}.

Pure conversion: no torch import, so it is testable and usable with any loader that yields numpy arrays.
"""
from collections.abc import Mapping

import flax.traverse_util
import numpy as np

# Modules the release defines but never calls in forward(); their weights are in best.pth.
UNUSED_MODULES = ('adjust_channels3', 'module4', 'module5')

_ENCODER_STAGES = {'module1': 'stage1', 'module2': 'stage2', 'module3': 'stage3'}
# Index of conv / BN inside the release's nn.Sequential(Conv, BN, LReLU, Conv, BN, LReLU).
_DOUBLE_CONV_INDEX = {'0': ('block0', 'conv'), '1': ('block0', 'bn'), '3': ('block1', 'conv'), '4': ('block1', 'bn')}
_GATE_INDEX = {'0': ('gate', 'conv'), '1': ('gate', 'bn'), '3': ('gate_out',)}
_REFINE_INDEX = {'0': ('refine', 'conv'), '1': ('refine', 'bn')}
_PROJECTIONS = ('q_v', 'k_v', 'v_v', 'q_i', 'k_i', 'v_i')


class WeightImportError(ValueError):
  """The state dict does not match the ISFuse architecture."""


def _module_path(prefix: str) -> tuple[str, ...] | None:
  """Flax module path for a PyTorch module prefix (key without the parameter name), or None if unknown."""
  parts = prefix.split('.')
  if len(parts) == 3 and parts[0] in ('encoder_ir', 'encoder_vis') and parts[1] in _ENCODER_STAGES:
    block = _DOUBLE_CONV_INDEX.get(parts[2])
    return (parts[0], _ENCODER_STAGES[parts[1]]) + block if block else None
  if len(parts) == 2 and parts[0] in ('adjust_channels4', 'adjust_channels5'):
    block = _DOUBLE_CONV_INDEX.get(parts[1])
    return ('adjust' + parts[0][-1],) + block if block else None
  if prefix == 'final_decoder.0':
    return ('final',)
  if parts[0] in ('cfi3', 'cfi4', 'cfi5'):
    if len(parts) == 2 and parts[1] in _PROJECTIONS:
      return (parts[0], parts[1])
    if len(parts) == 3 and parts[1] == 'gate' and parts[2] in _GATE_INDEX:
      return (parts[0],) + _GATE_INDEX[parts[2]]
    if len(parts) == 3 and parts[1] == 'refine' and parts[2] in _REFINE_INDEX:
      return (parts[0],) + _REFINE_INDEX[parts[2]]
  return None


_BN_LEAVES = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
              'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var')}
_CONV_LEAVES = {'weight': ('params', 'kernel'), 'bias': ('params', 'bias')}


def _convert(path: tuple[str, ...], name: str, value: np.ndarray) -> tuple[str, tuple[str, ...], np.ndarray] | None:
  """(collection, flax path, array) for one PyTorch tensor, or None if the name is not a conv/BN tensor."""
  leaves = _BN_LEAVES if path[-1] == 'bn' else _CONV_LEAVES
  if name not in leaves:
    return None
  collection, leaf = leaves[name]
  if leaf == 'kernel':
    # PyTorch OIHW -> Flax HWIO.
    value = np.transpose(value, (2, 3, 1, 0)) if value.ndim == 4 else value
  return collection, path + (leaf,), value


def _leaf_shapes(tree: Mapping) -> dict[tuple[str, ...], tuple[int, ...]]:
  return {path: tuple(leaf.shape) for path, leaf in flax.traverse_util.flatten_dict(dict(tree)).items()}


def _set(tree: dict, path: tuple[str, ...], value: np.ndarray) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def convert_state_dict(state_dict: Mapping[str, np.ndarray], target_shapes: Mapping) -> tuple[dict, list[str]]:
  """Maps a PyTorch ISFuse state dict to Flax variables, checking every key and shape.

  Args:
    state_dict: PyTorch parameter/buffer names -> numpy arrays.
    target_shapes: the Flax variables (or their jax.eval_shape structure) of the ISFuse model to load into; every
      leaf must be covered exactly once.

  Returns:
    ({'params': ..., 'batch_stats': ...} as float32 numpy trees, sorted names of the ignored unused modules).

  Raises:
    WeightImportError: naming every unknown key, shape mismatch and missing Flax variable.
  """
  expected = {(collection,) + path: shape for collection in ('params', 'batch_stats')
              for path, shape in _leaf_shapes(target_shapes.get(collection, {})).items()}
  variables: dict = {}
  ignored, problems = set(), []
  for key, value in state_dict.items():
    value = np.asarray(value)
    if key.split('.')[0] in UNUSED_MODULES:
      ignored.add(key.split('.')[0])
      continue
    prefix, _, name = key.rpartition('.')
    path = _module_path(prefix)
    if path is not None and path[-1] == 'bn' and name == 'num_batches_tracked':
      continue  # A step counter; Flax BatchNorm uses a fixed momentum and keeps none.
    converted = _convert(path, name, value) if path is not None else None
    if converted is None:
      problems.append(f'unexpected key {key!r} {tuple(value.shape)}')
      continue
    collection, flax_path, array = converted
    full = (collection,) + flax_path
    if full not in expected:
      problems.append(f'unexpected key {key!r} (maps to {"/".join(full)}, which the model does not have)')
    elif expected[full] != array.shape:
      problems.append(f'shape mismatch for {key!r}: checkpoint {tuple(value.shape)} -> {array.shape}, '
                      f'model {"/".join(full)} expects {expected.pop(full)}')
    else:
      expected.pop(full)
      _set(variables, full, array.astype(np.float32))
  problems.extend(f'missing: model variable {"/".join(path)} {shape} has no checkpoint key'
                  for path, shape in sorted(expected.items()))
  if problems:
    raise WeightImportError('PyTorch state dict does not match ISFuse:\n  ' + '\n  '.join(problems))
  return variables, sorted(ignored)
