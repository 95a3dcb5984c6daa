r"""Fuses infrared/visible image pairs with an ISFuse checkpoint.

  python -m launch.fuse --checkpoint=DIR --ir=a.png --vis=b.png --out=f.png
  python -m launch.fuse --checkpoint=DIR --ir_dir=IR --vis_dir=VIS --out_dir=OUT [--skip_bad] [--resize_to=ir|vis]

Colour visible images: the network fuses Y (BT.601) and the output keeps the visible Cr/Cb; gray in -> gray out.
Folder pairs match by file stem, or IR<n> with VIS<n>; outputs are <out_dir>/<name>.png.
"""
import pathlib
from collections.abc import Sequence

from absl import app
from absl import flags
from absl import logging

from launch import cli
from launch import compile_cache
from launch import fusion_files

_CHECKPOINT, _STEP, _IR_DIR, _VIS_DIR, _RESIZE_TO, _SKIP_BAD = cli.define_pair_flags()
_IR = flags.DEFINE_string('ir', None, 'Single mode: infrared image.')
_VIS = flags.DEFINE_string('vis', None, 'Single mode: visible image.')
_OUT = flags.DEFINE_string('out', None, 'Single mode: output image path (format from the extension).')
_OUT_DIR = flags.DEFINE_string('out_dir', None, 'Folder mode: output folder (created if needed).')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  compile_cache.enable()
  single = (_IR.value, _VIS.value, _OUT.value)
  folder = (_IR_DIR.value, _VIS_DIR.value, _OUT_DIR.value)
  if not _CHECKPOINT.value:
    raise app.UsageError('--checkpoint is required')
  if any(single) == any(folder) or not (all(single) or all(folder)):
    raise app.UsageError('give either --ir, --vis and --out, or --ir_dir, --vis_dir and --out_dir')
  if _SKIP_BAD.value and all(single):
    raise app.UsageError('--skip_bad applies to folder mode only')

  model, variables = fusion_files.load_model(_CHECKPOINT.value, _STEP.value)
  if all(single):
    fusion_files.fuse_file(model, variables, pathlib.Path(_IR.value), pathlib.Path(_VIS.value),
                           pathlib.Path(_OUT.value), _RESIZE_TO.value)
    logging.info('Wrote %s', _OUT.value)
    return
  skipped = fusion_files.fuse_folder(model, variables, _IR_DIR.value, _VIS_DIR.value, _OUT_DIR.value,
                                     _RESIZE_TO.value, _SKIP_BAD.value)
  cli.report_skipped(skipped)
  logging.info('Wrote fused images to %s (%d skipped).', _OUT_DIR.value, len(skipped))


if __name__ == '__main__':
  cli.run(main)
