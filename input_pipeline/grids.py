"""Image grids for evaluation reports and training-time previews of both model families (numpy only)."""
import numpy as np

from input_pipeline import images

GAP = 4  # Pixels of grey between panels.
GAP_VALUE = 128


def _as_rgb_u8(panel: np.ndarray) -> np.ndarray:
  """HxW or HxWx3 uint8, or float in [0, 1] (clipped, rounded) -> HxWx3 uint8."""
  panel = np.asarray(panel)
  if panel.ndim == 3 and panel.shape[-1] == 1:
    panel = panel[..., 0]
  if panel.ndim not in (2, 3) or (panel.ndim == 3 and panel.shape[-1] != 3):
    raise ValueError(f'grid panels must be HxW, HxWx1 or HxWx3, got shape {panel.shape}')
  if panel.dtype != np.uint8:
    if not np.issubdtype(panel.dtype, np.floating):
      raise ValueError(f'grid panels must be uint8 or float in [0, 1], got dtype {panel.dtype}')
    panel = images.quantize(panel)
  return np.repeat(panel[..., None], 3, axis=-1) if panel.ndim == 2 else panel


def make_grid(rows: list[list[np.ndarray]], gap: int = GAP) -> np.ndarray:
  """Lays out panels row by row (e.g. [[ir, vis, fused], ...]) as one HxWx3 uint8 image.

  Panels may differ in size and be gray or RGB, uint8 or float in [0, 1]; each column is as wide as its widest
  panel and each row as tall as its tallest, panels sit top-left in their cell, and gaps are grey.
  """
  if not rows or not all(rows):
    raise ValueError('make_grid needs at least one row and no empty rows')
  cells = [[_as_rgb_u8(p) for p in row] for row in rows]
  n_cols = max(len(row) for row in cells)
  widths = [max(row[c].shape[1] for row in cells if c < len(row)) for c in range(n_cols)]
  heights = [max(p.shape[0] for p in row) for row in cells]
  grid = np.full((sum(heights) + gap * (len(cells) - 1), sum(widths) + gap * (n_cols - 1), 3), GAP_VALUE, np.uint8)
  top = 0
  for row, height in zip(cells, heights):
    left = 0
    for panel, width in zip(row, widths):
      grid[top:top + panel.shape[0], left:left + panel.shape[1]] = panel
      left += width + gap
    top += height + gap
  return grid
