"""Importing the authors' released PyTorch ISFuse weights (best.pth) as an orbax inference checkpoint.

The library under launch.import_cfi_release (no flags, no process exit; errors are ProjectErrors naming the file).
Needs the optional torch extra (pip install torch==2.13.0).
"""
import pathlib
from collections.abc import Mapping

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from cfi_jax import torch_import
from cfi_jax.model import ISFuse
from input_pipeline import errors
from launch import checkpoints

_DEFAULT_FEATURES = 32
_WIDTH_KEY = 'encoder_ir.module1.0.weight'


class WeightFileError(errors.ProjectError, ValueError):
  """The PyTorch weight file cannot be loaded or converted; the message names it."""

_DEFAULT_FEATURES = 32
_WIDTH_KEY = 'encoder_ir.module1.0.weight'


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """Loads a PyTorch state dict safely (weights_only=True) as numpy arrays."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise WeightFileError('importing PyTorch weights needs torch: pip install torch==2.13.0') from e
  if not pathlib.Path(path).is_file():
    raise WeightFileError(f'{path}: file not found')
  try:
    state_dict = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises many types (pickle, zip, unsafe global); all mean "not loadable".
    raise WeightFileError(f'{path}: cannot load as a PyTorch state dict with weights_only=True ({e})') from e
  if not isinstance(state_dict, Mapping):
    raise WeightFileError(f'{path}: expected a state dict (mapping of names to tensors), got '
                          f'{type(state_dict).__name__}')
  arrays = {}
  for key, value in state_dict.items():
    if not isinstance(value, torch.Tensor):
      raise WeightFileError(f'{path}: entry {key!r} is a {type(value).__name__}, not a tensor')
    # DataParallel checkpoints prefix every key with 'module.'.
    arrays[key.removeprefix('module.')] = value.detach().cpu().numpy()
  return arrays


def import_state_dict(state_dict: Mapping[str, np.ndarray]) -> tuple[dict, dict, list[str]]:
  """(variables, checkpoint config, ignored module names) for an ISFuse state dict; width read from the weights."""
  features = state_dict[_WIDTH_KEY].shape[0] if _WIDTH_KEY in state_dict else _DEFAULT_FEATURES
  model_config = {'features': int(features), 'use_cfi': True, 'pool_size': 8}
  model = ISFuse(**model_config)
  example = jnp.zeros((1, 32, 32, 1), jnp.float32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), example, example, train=False))
  variables, ignored = torch_import.convert_state_dict(state_dict, shapes)
  return variables, {'model': 'cfi', 'model_config': model_config}, ignored


def import_checkpoint(torch_checkpoint: str, output_dir: str) -> pathlib.Path:
  """Converts `torch_checkpoint` into an orbax checkpoint in `output_dir`.

  Raises:
    WeightFileError: the weight file cannot be loaded or converted.
    checkpoints.CheckpointExistsError: `output_dir` already holds a checkpoint.
  """
  state_dict = load_torch_state_dict(torch_checkpoint)
  try:
    variables, config, ignored = import_state_dict(state_dict)
  except torch_import.WeightImportError as e:
    raise WeightFileError(f'{torch_checkpoint}: {e}') from e
  for name in ignored:
    count = sum(v.size for k, v in state_dict.items()
                if k.split('.')[0] == name and k.rpartition('.')[2] in ('weight', 'bias'))
    logging.warning('Ignoring %s (%d parameters): the release defines it but never uses it in forward().',
                    name, count)
  config['source'] = {'torch_checkpoint': str(pathlib.Path(torch_checkpoint).absolute()),
                      'ignored_modules': ignored}
  path = checkpoints.save_inference_checkpoint(output_dir, variables, config)
  n_params = sum(x.size for x in jax.tree.leaves(variables['params']))
  logging.info('Wrote %s (%d parameters, model_config %s).', path, n_params, config['model_config'])
  return path
