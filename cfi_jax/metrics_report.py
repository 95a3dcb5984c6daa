"""Aggregation of per-image fusion metrics into mean +- std tables (Markdown and JSON-ready dicts)."""
from collections.abc import Mapping, Sequence
import math

import numpy as np


def summarize(rows: Sequence[Mapping[str, object]], metric_names: Sequence[str], *,
              method_key: str = 'method') -> dict[str, dict[str, dict[str, float]]]:
  """{method: {metric: {'mean', 'std', 'count'}}} over per-image rows, methods in first-seen order.

  std is the population standard deviation (numpy's default, as fusion papers' tables use). NaN values (a metric
  undefined for an image, e.g. VIF of a flat image) are left out and `count` says how many images remain.
  """
  by_method: dict[str, list[Mapping[str, object]]] = {}
  for row in rows:
    by_method.setdefault(str(row[method_key]), []).append(row)
  summary = {}
  for method, method_rows in by_method.items():
    summary[method] = {}
    for name in metric_names:
      values = np.array([float(r[name]) for r in method_rows], np.float64)
      values = values[~np.isnan(values)]
      summary[method][name] = {
          'mean': float(values.mean()) if values.size else math.nan,
          'std': float(values.std()) if values.size else math.nan,
          'count': int(values.size),
      }
  return summary


def _format(stats: Mapping[str, float], digits: int) -> str:
  if math.isnan(stats['mean']):
    return 'n/a'
  return f'{stats["mean"]:.{digits}f} ± {stats["std"]:.{digits}f}'


def markdown_table(summary: Mapping[str, Mapping[str, Mapping[str, float]]], metric_names: Sequence[str], *,
                   digits: int = 4) -> str:
  """A Markdown table: one row per method, one 'mean ± std' column per metric."""
  header = '| method | ' + ' | '.join(metric_names) + ' |'
  rule = '|---|' + '---|' * len(metric_names)
  lines = [header, rule]
  for method, stats in summary.items():
    lines.append(f'| {method} | ' + ' | '.join(_format(stats[n], digits) for n in metric_names) + ' |')
  return '\n'.join(lines)
