r"""Scores fused infrared/visible images with the fusion metrics, in one or several dialects.

  python -m launch.evaluate --fused_dir=FUSED --ir_dir=IR --vis_dir=VIS --output_dir=OUT [--dialect=tang2023,cddfuse]
  python -m launch.evaluate --checkpoint=CKPT --ir_dir=IR --vis_dir=VIS --output_dir=OUT [--baselines] [--num_grid=4]

--fused_dir scores existing fused images of any method (<name>.<ext> per pair, names as launch.fuse writes them);
--checkpoint first fuses every pair with an ISFuse checkpoint into OUT/fused/ and scores those files, so both modes
score exactly what a file on disk holds. Colour images are converted to gray the way each dialect's evaluator does.

Writes OUT/metrics_<dialect>.csv (per image), OUT/summary.md and OUT/summary.json (mean ± std per method, dialect
named) and OUT/grid.png (IR | VIS | fused for the first --num_grid pairs). --baselines adds the plain average and
the per-pixel maximum of the two sources as context rows. Pairs, --resize_to and --skip_bad work as in launch.fuse.
"""
import csv
import json
import math
import pathlib
from collections.abc import Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np
from PIL import Image
import tqdm

from cfi_jax import inference
from cfi_jax import metrics
from cfi_jax import metrics_report
from cfi_jax import visualize
from input_pipeline import images
from launch import checkpoints
from launch import compile_cache
from launch import fusion_files
from launch import fusion_flags

_FUSED_DIR = flags.DEFINE_string('fused_dir', None, 'Folder of fused images to score (instead of --checkpoint).')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Folder for the CSV/Markdown/JSON reports and the grid.')
_DIALECT = flags.DEFINE_list('dialect', [metrics.DEFAULT_DIALECT],
                             f'Metric dialect(s), comma-separated: {", ".join(metrics.DIALECTS)}.')
_NUM_GRID = flags.DEFINE_integer('num_grid', 4, 'Pairs shown in grid.png (0: no grid).', lower_bound=0)
_BASELINES = flags.DEFINE_bool('baselines', False, 'Also score the average and the maximum of the two sources.')
_METHOD = flags.DEFINE_string('method', None, 'Row label of the scored images (default: the folder/checkpoint name).')

BASELINES = ('average', 'maximum')


def _to_u8(img: np.ndarray) -> np.ndarray:
  return img if img.dtype == np.uint8 else images.quantize(images.to_unit_float(img))


def _resize_u8(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  return images.quantize(images.resize_image(images.to_unit_float(img), size))


def load_sources(ir_path: pathlib.Path, vis_path: pathlib.Path,
                 resize_to: str | None) -> tuple[np.ndarray, np.ndarray]:
  """(ir, vis) as 8-bit arrays (gray or RGB, as stored) of one size, reconciled as `resize_to` asks."""
  try:
    ir, vis = _to_u8(images.read_image(ir_path)), _to_u8(images.read_image(vis_path))
  except images.ImageReadError as e:
    raise fusion_files.PairError(str(e)) from e
  if ir.shape[:2] != vis.shape[:2]:
    if resize_to is None:
      raise fusion_files.size_mismatch(ir_path, ir.shape, vis_path, vis.shape)
    if resize_to == 'ir':
      vis = _resize_u8(vis, ir.shape[:2])
    else:
      ir = _resize_u8(ir, vis.shape[:2])
  return ir, vis


def index_fused(fused_dir: pathlib.Path) -> dict[str, pathlib.Path]:
  """Image files of the fused folder by stem; two files with one stem are an error."""
  if not fused_dir.is_dir():
    raise ValueError(f'{fused_dir}: not a directory')
  by_stem: dict[str, pathlib.Path] = {}
  for path in sorted(fused_dir.iterdir()):
    if path.is_file() and path.suffix.lower() in images.IMAGE_EXTENSIONS and not path.name.startswith('.'):
      if path.stem in by_stem:
        raise ValueError(f'{fused_dir}: {by_stem[path.stem].name} and {path.name} are both fused images of '
                         f'pair {path.stem!r}')
      by_stem[path.stem] = path
  return by_stem


def load_fused(fused_index: dict[str, pathlib.Path], fused_dir: pathlib.Path, name: str,
               size: tuple[int, int]) -> np.ndarray:
  if name not in fused_index:
    raise fusion_files.PairError(f'{fused_dir}: no fused image for pair {name!r} (expected {name}.png or '
                                 'another image extension)')
  path = fused_index[name]
  try:
    fused = _to_u8(images.read_image(path))
  except images.ImageReadError as e:
    raise fusion_files.PairError(str(e)) from e
  if fused.shape[:2] != size:
    raise fusion_files.PairError(f'{path} is {fused.shape[1]}x{fused.shape[0]} but its sources are '
                                 f'{size[1]}x{size[0]} (WxH)')
  return fused


def baseline_images(ir_gray: np.ndarray, vis_gray: np.ndarray) -> dict[str, np.ndarray]:
  """Context rows: the plain average (rounded half up) and the per-pixel maximum of two gray uint8 sources."""
  total = ir_gray.astype(np.uint16) + vis_gray
  return {'average': ((total + 1) // 2).astype(np.uint8), 'maximum': np.maximum(ir_gray, vis_gray)}


def score_pair(fused: np.ndarray, ir: np.ndarray, vis: np.ndarray, dialect: str, method: str,
               baselines: bool) -> list[dict[str, object]]:
  """Metric rows {method, metric...} of one pair in one dialect (the fused image, then the baselines)."""
  f, a, b = (metrics.to_gray_u8(x, dialect) for x in (fused, ir, vis))
  candidates = {method: f}
  if baselines:
    candidates.update(baseline_images(a, b))
  return [{'method': m, **metrics.compute_metrics(img, a, b, dialect)} for m, img in candidates.items()]


def _json_safe(value):
  if isinstance(value, float) and not math.isfinite(value):
    return None  # JSON has no NaN/Inf.
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_json_safe(v) for v in value]
  return value


def write_reports(output_dir: pathlib.Path, rows: dict[str, list[dict[str, object]]], info: dict[str, object]
                  ) -> None:
  """metrics_<dialect>.csv, summary.md and summary.json from per-dialect rows {'name', 'method', metrics...}."""
  output_dir.mkdir(parents=True, exist_ok=True)
  markdown = [f'# Fusion metrics\n\n{info["num_pairs"]} pairs from `{info["ir_dir"]}` / `{info["vis_dir"]}`, '
              f'scored: `{info["scored"]}`. Values are mean ± std (population) over the pairs.']
  report = dict(info, dialects={})
  for dialect, dialect_rows in rows.items():
    names = list(metrics.METRIC_NAMES[dialect])
    with open(output_dir / f'metrics_{dialect}.csv', 'w', newline='') as f:
      writer = csv.DictWriter(f, fieldnames=['name', 'method'] + names)
      writer.writeheader()
      writer.writerows({k: (f'{v:.10g}' if isinstance(v, float) else v) for k, v in r.items()}
                       for r in dialect_rows)
    summary = metrics_report.summarize(dialect_rows, names)
    markdown.append(f'## Dialect `{dialect}`\n\n{metrics_report.markdown_table(summary, names)}')
    report['dialects'][dialect] = {'metrics': names, 'summary': summary}
  (output_dir / 'summary.md').write_text('\n\n'.join(markdown) + '\n')
  (output_dir / 'summary.json').write_text(json.dumps(_json_safe(report), indent=2) + '\n')


def fuse_with_checkpoint(checkpoint: str, step: int | None, ir_dir: str, vis_dir: str, out_dir: pathlib.Path,
                         resize_to: str | None, skip_bad: bool) -> list[tuple[str, str]]:
  """Fuses every pair into out_dir with fusion_files.fuse_folder; returns the skipped (name, reason)."""
  variables, config = checkpoints.restore_model_variables(checkpoint, step)
  if config['model'] != 'isfuse':
    raise SystemExit(f'{checkpoint} holds a {config["model"]!r} model; launch.evaluate needs an isfuse checkpoint')
  model = inference.model_from_config(config['model_config'])
  return fusion_files.fuse_folder(model, variables, ir_dir, vis_dir, str(out_dir), resize_to, skip_bad)


def evaluate(ir_dir: str, vis_dir: str, fused_dir: pathlib.Path, output_dir: pathlib.Path, dialects: Sequence[str],
             *, method: str, baselines: bool, num_grid: int, resize_to: str | None, skip_bad: bool,
             skipped: list[tuple[str, str]]) -> dict[str, list[dict[str, object]]]:
  """Scores every pair with a fused image in fused_dir; writes the reports and the grid; returns the rows."""
  pairs = images.find_pairs(ir_dir, vis_dir)
  skipped_names = {name for name, _ in skipped}
  fused_index = index_fused(fused_dir)
  rows: dict[str, list[dict[str, object]]] = {d: [] for d in dialects}
  grid_rows = []
  for pair in tqdm.tqdm([p for p in pairs if p.name not in skipped_names], desc='scoring', unit='pair'):
    try:
      ir, vis = load_sources(pair.ir_path, pair.vis_path, resize_to)
      fused = load_fused(fused_index, fused_dir, pair.name, ir.shape[:2])
    except fusion_files.PairError as e:
      if not skip_bad:
        raise
      logging.warning('Skipping pair %s: %s', pair.name, e)
      skipped.append((pair.name, str(e)))
      continue
    for dialect in dialects:
      rows[dialect].extend({'name': pair.name, **r} for r in score_pair(fused, ir, vis, dialect, method, baselines))
    if len(grid_rows) < num_grid:
      grid_rows.append([ir, vis, fused])
  num_scored = len(pairs) - len(skipped)
  if not num_scored:
    raise ValueError(f'no pair of {ir_dir} / {vis_dir} could be scored')
  info = {'ir_dir': str(ir_dir), 'vis_dir': str(vis_dir), 'scored': str(fused_dir), 'method': method,
          'num_pairs': num_scored, 'skipped': [{'name': n, 'reason': r} for n, r in skipped]}
  write_reports(output_dir, rows, info)
  if grid_rows:
    Image.fromarray(visualize.make_grid(grid_rows)).save(output_dir / 'grid.png')
  return rows


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  compile_cache.enable()
  if bool(fusion_flags.CHECKPOINT.value) == bool(_FUSED_DIR.value):
    raise app.UsageError('give exactly one of --checkpoint and --fused_dir')
  missing = [f'--{f.name}' for f in (fusion_flags.IR_DIR, fusion_flags.VIS_DIR, _OUTPUT_DIR) if not f.value]
  if missing:
    raise app.UsageError(f'missing {", ".join(missing)}')
  dialects = list(dict.fromkeys(_DIALECT.value))
  for dialect in dialects:
    if dialect not in metrics.DIALECTS:
      raise app.UsageError(f'unknown --dialect {dialect!r}; choose from {", ".join(metrics.DIALECTS)}')
  output_dir = pathlib.Path(_OUTPUT_DIR.value)
  source = pathlib.Path(fusion_flags.CHECKPOINT.value or _FUSED_DIR.value)
  method = _METHOD.value or source.absolute().name
  if method in BASELINES and _BASELINES.value:
    raise app.UsageError(f'--method {method!r} clashes with a baseline row name; pass another --method')

  ir_dir, vis_dir = fusion_flags.IR_DIR.value, fusion_flags.VIS_DIR.value
  resize_to, skip_bad = fusion_flags.RESIZE_TO.value, fusion_flags.SKIP_BAD.value
  try:
    skipped: list[tuple[str, str]] = []
    if fusion_flags.CHECKPOINT.value:
      fused_dir = output_dir / 'fused'
      skipped = fuse_with_checkpoint(fusion_flags.CHECKPOINT.value, fusion_flags.STEP.value, ir_dir, vis_dir,
                                     fused_dir, resize_to, skip_bad)
    else:
      fused_dir = pathlib.Path(_FUSED_DIR.value)
    evaluate(ir_dir, vis_dir, fused_dir, output_dir, dialects, method=method, baselines=_BASELINES.value,
             num_grid=_NUM_GRID.value, resize_to=resize_to, skip_bad=skip_bad, skipped=skipped)
  except (ValueError, OSError) as e:  # Bad pairs, folders or output paths: the message names the file.
    raise SystemExit(f'error: {e}') from e
  if skipped:
    logging.warning('Skipped %d pair(s):\n  %s', len(skipped), '\n  '.join(f'{n}: {r}' for n, r in skipped))
  logging.info('Wrote %s (summary.md, summary.json, metrics_*.csv, grid.png).', output_dir)
  print((output_dir / 'summary.md').read_text())


if __name__ == '__main__':
  app.run(main)
