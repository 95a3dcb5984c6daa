r"""Fuses infrared/visible image pairs with an ISFuse checkpoint.

  python -m launch.fuse --checkpoint=DIR --ir=a.png --vis=b.png --out=f.png
  python -m launch.fuse --checkpoint=DIR --ir_dir=IR --vis_dir=VIS --out_dir=OUT [--skip_bad] [--resize_to=ir|vis]

Colour visible images: the network fuses Y (BT.601) and the output keeps the visible Cr/Cb; gray in -> gray out.
Folder pairs match by file stem, or IR<n> with VIS<n>; outputs are <out_dir>/<name>.png.
"""
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tqdm

from cfi_jax import inference
from cfi_jax.model import ISFuse
from input_pipeline import images
from launch import checkpoints

_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'Orbax checkpoint directory (launch.import_isfuse/train).')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step; the latest by default.')
_IR = flags.DEFINE_string('ir', None, 'Single mode: infrared image.')
_VIS = flags.DEFINE_string('vis', None, 'Single mode: visible image.')
_OUT = flags.DEFINE_string('out', None, 'Single mode: output image path (format from the extension).')
_IR_DIR = flags.DEFINE_string('ir_dir', None, 'Folder mode: folder of infrared images.')
_VIS_DIR = flags.DEFINE_string('vis_dir', None, 'Folder mode: folder of visible images.')
_OUT_DIR = flags.DEFINE_string('out_dir', None, 'Folder mode: output folder (created if needed).')
_RESIZE_TO = flags.DEFINE_enum('resize_to', None, ['ir', 'vis'],
                               'Resize the other image to this one\'s size when sizes differ (default: error).')
_SKIP_BAD = flags.DEFINE_bool('skip_bad', False, 'Folder mode: skip unreadable or mismatched pairs with a warning.')


class PairError(ValueError):
  """A pair cannot be fused (unreadable file or mismatched sizes); the message names the files."""


def load_pair(ir_path: pathlib.Path, vis_path: pathlib.Path,
              resize_to: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
  """(ir, vis_y, vis_crcb or None) as float32 in [0,1], with sizes reconciled as `resize_to` asks."""
  try:
    ir = images.load_ir(ir_path)
    vis_y, crcb = images.load_vis(vis_path)
  except images.ImageReadError as e:
    raise PairError(str(e)) from e
  if ir.shape != vis_y.shape:
    if resize_to is None:
      raise PairError(f'size mismatch: IR {ir_path} is {ir.shape[1]}x{ir.shape[0]} but VIS {vis_path} is '
                      f'{vis_y.shape[1]}x{vis_y.shape[0]} (WxH); pass --resize_to=ir or --resize_to=vis')
    if resize_to == 'ir':
      vis_y = images.resize_image(vis_y, ir.shape)
      crcb = None if crcb is None else images.resize_image(crcb, ir.shape)
    else:
      ir = images.resize_image(ir, vis_y.shape)
  return ir, vis_y, crcb


def fuse_file(model: ISFuse, variables: Mapping[str, Any], ir_path: pathlib.Path, vis_path: pathlib.Path,
              out_path: pathlib.Path, resize_to: str | None) -> None:
  """Fuses one pair of image files and writes the result (colour when the visible image is colour)."""
  ir, vis_y, crcb = load_pair(ir_path, vis_path, resize_to)
  images.save_fused(out_path, inference.fuse_luma(model, variables, vis_y, ir), crcb)


def fuse_folder(model: ISFuse, variables: Mapping[str, Any], ir_dir: str, vis_dir: str, out_dir: str,
                resize_to: str | None, skip_bad: bool) -> list[tuple[str, str]]:
  """Fuses every pair of two folders into out_dir; returns the skipped (name, reason) when skip_bad is set."""
  pairs = images.find_pairs(ir_dir, vis_dir)
  out_dir = pathlib.Path(out_dir)
  skipped = []
  for pair in tqdm.tqdm(pairs, desc='fusing', unit='pair'):
    try:
      fuse_file(model, variables, pair.ir_path, pair.vis_path, out_dir / f'{pair.name}.png', resize_to)
    except PairError as e:
      if not skip_bad:
        raise
      logging.warning('Skipping pair %s: %s', pair.name, e)
      skipped.append((pair.name, str(e)))
  return skipped


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  single = (_IR.value, _VIS.value, _OUT.value)
  folder = (_IR_DIR.value, _VIS_DIR.value, _OUT_DIR.value)
  if not _CHECKPOINT.value:
    raise app.UsageError('--checkpoint is required')
  if any(single) == any(folder) or not (all(single) or all(folder)):
    raise app.UsageError('give either --ir, --vis and --out, or --ir_dir, --vis_dir and --out_dir')
  if _SKIP_BAD.value and all(single):
    raise app.UsageError('--skip_bad applies to folder mode only')

  variables, config = checkpoints.restore_model_variables(_CHECKPOINT.value, _STEP.value)
  if config['model'] != 'isfuse':
    raise SystemExit(f'{_CHECKPOINT.value} holds a {config["model"]!r} model; launch.fuse needs an isfuse checkpoint')
  model = inference.model_from_config(config['model_config'])

  try:
    if all(single):
      fuse_file(model, variables, pathlib.Path(_IR.value), pathlib.Path(_VIS.value), pathlib.Path(_OUT.value),
                _RESIZE_TO.value)
      logging.info('Wrote %s', _OUT.value)
      return
    skipped = fuse_folder(model, variables, _IR_DIR.value, _VIS_DIR.value, _OUT_DIR.value, _RESIZE_TO.value,
                          _SKIP_BAD.value)
  except (ValueError, OSError) as e:  # Bad pairs, folders or output paths: the message names the file.
    raise SystemExit(f'error: {e}') from e
  if skipped:
    logging.warning('Skipped %d pair(s):\n  %s', len(skipped), '\n  '.join(f'{n}: {r}' for n, r in skipped))
  logging.info('Wrote fused images to %s (%d skipped).', _OUT_DIR.value, len(skipped))


if __name__ == '__main__':
  app.run(main)
