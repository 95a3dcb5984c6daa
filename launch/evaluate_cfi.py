r"""Scores fused infrared/visible images with the fusion metrics, in one or several dialects.

  python -m launch.evaluate_cfi --fused_dir=FUSED --ir_dir=IR --vis_dir=VIS --output_dir=OUT \
      [--dialect=tang2023,cddfuse]
  python -m launch.evaluate_cfi --checkpoint=CKPT --ir_dir=IR --vis_dir=VIS --output_dir=OUT [--baselines] \
      [--num_grid=4]

--fused_dir scores existing fused images of any method (<name>.<ext> per pair, names as launch.fuse writes them);
--checkpoint first fuses every pair with an ISFuse checkpoint into OUT/fused/ and scores those files, so both modes
score exactly what a file on disk holds. Colour images are converted to gray the way each dialect's evaluator does.

Writes OUT/metrics_<dialect>.csv (per image), OUT/summary.md and OUT/summary.json (mean ± std per method, dialect
named) and OUT/grid.png (IR | VIS | fused for the first --num_grid pairs). --baselines adds the plain average and
the per-pixel maximum of the two sources, and each source alone, as context rows. Pairs, --resize_to and --skip_bad
work as in launch.fuse.
"""
import pathlib
from collections.abc import Sequence

from absl import app
from absl import flags
from absl import logging

from cfi_jax import metrics
from launch import cli
from launch import compile_cache
from launch import fusion_eval

_CHECKPOINT, _STEP, _IR_DIR, _VIS_DIR, _RESIZE_TO, _SKIP_BAD = cli.define_pair_flags()
_FUSED_DIR = flags.DEFINE_string('fused_dir', None, 'Folder of fused images to score (instead of --checkpoint).')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Folder for the CSV/Markdown/JSON reports and the grid.')
_DIALECT = flags.DEFINE_list('dialect', [metrics.DEFAULT_DIALECT],
                             f'Metric dialect(s), comma-separated: {", ".join(metrics.DIALECTS)}.')
_NUM_GRID = flags.DEFINE_integer('num_grid', 4, 'Pairs shown in grid.png (0: no grid).', lower_bound=0)
_BASELINES = flags.DEFINE_bool('baselines', False, 'Also score the average and the maximum of the two sources, and '
                                'each source alone.')
_METHOD = flags.DEFINE_string('method', None, 'Row label of the scored images (default: the folder/checkpoint name).')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  compile_cache.enable()
  missing = [f'--{f.name}' for f in (_IR_DIR, _VIS_DIR, _OUTPUT_DIR) if not f.value]
  if missing:
    raise app.UsageError(f'missing {", ".join(missing)}')
  _, skipped = fusion_eval.evaluate_folders(
      _IR_DIR.value, _VIS_DIR.value, _OUTPUT_DIR.value, _DIALECT.value, checkpoint=_CHECKPOINT.value,
      step=_STEP.value, fused_dir=_FUSED_DIR.value, method=_METHOD.value, baselines=_BASELINES.value,
      num_grid=_NUM_GRID.value, resize_to=_RESIZE_TO.value, skip_bad=_SKIP_BAD.value)
  cli.report_skipped(skipped)
  logging.info('Wrote %s (summary.md, summary.json, metrics_*.csv, grid.png).', _OUTPUT_DIR.value)
  print((pathlib.Path(_OUTPUT_DIR.value) / 'summary.md').read_text())


if __name__ == '__main__':
  cli.run(main)
