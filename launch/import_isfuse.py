r"""Imports the authors' released PyTorch ISFuse weights (best.pth) into an orbax checkpoint.

  python -m launch.import_isfuse --torch_checkpoint=PATH/best.pth --output_dir=DIR

Needs the optional torch extra (pip install torch==2.13.0). The checkpoint holds {'params', 'batch_stats'} and the
model config, and restores with launch.checkpoints.restore_model_variables (e.g. `launch.fuse --checkpoint=DIR`).
"""
import pathlib
from collections.abc import Mapping, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from cfi_jax import torch_import
from cfi_jax.model import ISFuse
from launch import checkpoints

FLAGS = flags.FLAGS

_DEFAULT_FEATURES = 32
_WIDTH_KEY = 'encoder_ir.module1.0.weight'


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """Loads a PyTorch state dict safely (weights_only=True) as numpy arrays."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise SystemExit('importing PyTorch weights needs torch: pip install torch==2.13.0') from e
  if not pathlib.Path(path).is_file():
    raise SystemExit(f'{path}: file not found')
  try:
    state_dict = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises many types (pickle, zip, unsafe global); all mean "not loadable".
    raise SystemExit(f'{path}: cannot load as a PyTorch state dict with weights_only=True ({e})') from e
  if not isinstance(state_dict, Mapping):
    raise SystemExit(f'{path}: expected a state dict (mapping of names to tensors), got {type(state_dict).__name__}')
  arrays = {}
  for key, value in state_dict.items():
    if not isinstance(value, torch.Tensor):
      raise SystemExit(f'{path}: entry {key!r} is a {type(value).__name__}, not a tensor')
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
  return variables, {'model': 'isfuse', 'model_config': model_config}, ignored


def import_checkpoint(torch_checkpoint: str, output_dir: str) -> pathlib.Path:
  """Converts `torch_checkpoint` into an orbax checkpoint in `output_dir`; SystemExit naming the file on errors."""
  state_dict = load_torch_state_dict(torch_checkpoint)
  try:
    variables, config, ignored = import_state_dict(state_dict)
  except torch_import.WeightImportError as e:
    raise SystemExit(f'{torch_checkpoint}: {e}') from e
  for name in ignored:
    count = sum(v.size for k, v in state_dict.items()
                if k.split('.')[0] == name and k.rpartition('.')[2] in ('weight', 'bias'))
    logging.warning('Ignoring %s (%d parameters): the release defines it but never uses it in forward().',
                    name, count)
  config['source'] = {'torch_checkpoint': str(pathlib.Path(torch_checkpoint).absolute()),
                      'ignored_modules': ignored}
  try:
    path = checkpoints.save_inference_checkpoint(output_dir, variables, config)
  except FileExistsError as e:
    raise SystemExit(str(e)) from e
  n_params = sum(x.size for x in jax.tree.leaves(variables['params']))
  logging.info('Wrote %s (%d parameters, model_config %s).', path, n_params, config['model_config'])
  return path


def define_flags() -> None:
  # Defined only when run as a program: launch.evaluate also has --output_dir, and both are imported in one process
  # by the tests and notebooks.
  flags.DEFINE_string('torch_checkpoint', None, 'Path of the released PyTorch state dict (.pth).')
  flags.DEFINE_string('output_dir', None, 'Empty or new directory for the orbax checkpoint.')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not FLAGS.torch_checkpoint or not FLAGS.output_dir:
    raise app.UsageError('--torch_checkpoint and --output_dir are required')
  import_checkpoint(FLAGS.torch_checkpoint, FLAGS.output_dir)


if __name__ == '__main__':
  define_flags()
  app.run(main)
