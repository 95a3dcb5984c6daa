"""Scoring fused infrared/visible images with the fusion metrics: pairs, fused files, reports and the grid.

The library under launch.evaluate_cfi (no flags, no process exit; errors are ProjectErrors naming the file). A folder
of fused images of any method (<name>.<ext> per pair, names as launch.fuse writes them) is scored against its
sources, so every mode scores exactly what a file on disk holds.
"""
import csv
import json
import math
import pathlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from cfi_jax import metrics
from cfi_jax import metrics_report
from input_pipeline import errors
from input_pipeline import grids
from input_pipeline import images
from input_pipeline import paired_folders
from launch import fusion_files

BASELINES = ('average', 'maximum', 'ir_alone', 'visible_alone')


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
  size = paired_folders.pair_size(ir.shape, vis.shape, ir_path, vis_path, resize_to=resize_to,
                                  fix=images.RESIZE_FLAG)
  if vis.shape[:2] != size:
    vis = _resize_u8(vis, size)
  if ir.shape[:2] != size:
    ir = _resize_u8(ir, size)
  return ir, vis


def index_fused(fused_dir: pathlib.Path) -> dict[str, pathlib.Path]:
  """Image files of the fused folder by stem; two files with one stem are an error."""
  if not fused_dir.is_dir():
    raise fusion_files.PairError(f'{fused_dir}: not a directory')
  by_stem: dict[str, pathlib.Path] = {}
  for path in sorted(fused_dir.iterdir()):
    if path.is_file() and path.suffix.lower() in images.IMAGE_EXTENSIONS and not path.name.startswith('.'):
      if path.stem in by_stem:
        raise fusion_files.PairError(f'{fused_dir}: {by_stem[path.stem].name} and {path.name} are both fused images of '
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
  """Context rows (BASELINES): the plain average (rounded half up) and the per-pixel maximum of two gray uint8
  sources, and each source alone (metrics that reward copying a source, such as VIF and SSIM, score it high)."""
  total = ir_gray.astype(np.uint16) + vis_gray
  return {'average': ((total + 1) // 2).astype(np.uint8), 'maximum': np.maximum(ir_gray, vis_gray),
          'ir_alone': ir_gray, 'visible_alone': vis_gray}


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
  model, variables = fusion_files.load_model(checkpoint, step)
  return fusion_files.fuse_folder(model, variables, ir_dir, vis_dir, str(out_dir), resize_to, skip_bad)


def evaluate(ir_dir: str, vis_dir: str, fused_dir: pathlib.Path, output_dir: pathlib.Path, dialects: Sequence[str],
             *, method: str, baselines: bool, num_grid: int, resize_to: str | None, skip_bad: bool,
             skipped: list[tuple[str, str]]) -> dict[str, list[dict[str, object]]]:
  """Scores every pair with a fused image in fused_dir; writes the reports and the grid; returns the rows."""
  pairs, unpaired = paired_folders.list_pairs(ir_dir, vis_dir, skip_bad=skip_bad)
  skipped.extend(entry for entry in unpaired if entry not in skipped)
  skipped_names = {name for name, _ in skipped}
  fused_index = index_fused(fused_dir)
  rows: dict[str, list[dict[str, object]]] = {d: [] for d in dialects}
  grid_rows = []
  num_scored = 0

  def load(pair: images.ImagePair) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ir, vis = load_sources(pair.ir_path, pair.vis_path, resize_to)
    return ir, vis, load_fused(fused_index, fused_dir, pair.name, ir.shape[:2])

  todo = [p for p in pairs if p.name not in skipped_names]
  for pair, (ir, vis, fused) in paired_folders.each_good_pair(todo, load, skip_bad=skip_bad, skipped=skipped,
                                                              desc='scoring'):
    num_scored += 1
    for dialect in dialects:
      rows[dialect].extend({'name': pair.name, **r} for r in score_pair(fused, ir, vis, dialect, method, baselines))
    if len(grid_rows) < num_grid:
      grid_rows.append([ir, vis, fused])
  if not num_scored:
    raise fusion_files.PairError(f'no pair of {ir_dir} / {vis_dir} could be scored')
  info = {'ir_dir': str(ir_dir), 'vis_dir': str(vis_dir), 'scored': str(fused_dir), 'method': method,
          'num_pairs': num_scored, 'skipped': [{'name': n, 'reason': r} for n, r in skipped]}
  write_reports(output_dir, rows, info)
  if grid_rows:
    Image.fromarray(grids.make_grid(grid_rows)).save(output_dir / 'grid.png')
  return rows


def evaluate_folders(ir_dir: str, vis_dir: str, output_dir: str | pathlib.Path, dialects: Sequence[str], *,
                     checkpoint: str | None = None, step: int | None = None, fused_dir: str | None = None,
                     method: str | None = None, baselines: bool = False, num_grid: int = 4,
                     resize_to: str | None = None, skip_bad: bool = False
                     ) -> tuple[dict[str, list[dict[str, object]]], list[tuple[str, str]]]:
  """launch.evaluate_cfi: scores `fused_dir`, or first fuses every pair with `checkpoint` into output_dir/fused/.

  Returns (rows per dialect, skipped (name, reason)).

  Raises:
    errors.ConfigError: not exactly one of checkpoint / fused_dir, an unknown dialect or a method name that clashes
      with a baseline row.
    fusion_files.PairError, checkpoints.CheckpointError, errors.DataConfigError: bad pairs, folders or checkpoint.
  """
  if bool(checkpoint) == bool(fused_dir):
    raise errors.ConfigError('give exactly one of --checkpoint and --fused_dir')
  dialects = list(dict.fromkeys(dialects))
  for dialect in dialects:
    if dialect not in metrics.DIALECTS:
      raise errors.ConfigError(f'unknown --dialect {dialect!r}; choose from {", ".join(metrics.DIALECTS)}')
  output_dir = pathlib.Path(output_dir)
  method = method or pathlib.Path(checkpoint or fused_dir).absolute().name
  if method in BASELINES and baselines:
    raise errors.ConfigError(f'--method {method!r} clashes with a baseline row name; pass another --method')
  skipped: list[tuple[str, str]] = []
  if checkpoint:
    fused_path = output_dir / 'fused'
    skipped = fuse_with_checkpoint(checkpoint, step, ir_dir, vis_dir, fused_path, resize_to, skip_bad)
  else:
    fused_path = pathlib.Path(fused_dir)
  rows = evaluate(ir_dir, vis_dir, fused_path, output_dir, dialects, method=method, baselines=baselines,
                  num_grid=num_grid, resize_to=resize_to, skip_bad=skip_bad, skipped=skipped)
  return rows, skipped
