"""The three CFI interventions on the input images, drawn as the authors' release draws them.

Every function is pure and jit-compiled; randomness comes only from the PRNG key, so a key fixes the masks.
Masks are float32 [B,H,W,1] with 1 = kept and 0 = hidden, multiplied into images in [0,1].

The release draws holes with Python's `random.randint`, whose bounds are inclusive: a square's top-left corner lies
in [0, size - side] and a disk's centre in [r, size - r]. A pixel belongs to a disk when its squared distance to the
centre is at most r^2.
"""
import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

# View order in every stacked array; disabled strategies are left out, the clean view is always first.
CLEAN = 'clean'
COMPLEMENTARY = 'complementary'
RANDOM = 'random'
VIS_DROPPED = 'vis_dropped'
IR_DROPPED = 'ir_dropped'


@dataclasses.dataclass(frozen=True)
class HoleConfig:
  """How the hole masks are drawn (defaults: the release's InterventionMasker).

  Attributes:
    square_size: inclusive range of a square hole's side in pixels.
    disk_radius: inclusive range of a disk hole's radius in pixels.
    num_holes: inclusive range of the number of holes per image.
    p_square: probability that a hole is a square (otherwise a disk).
  """
  square_size: tuple[int, int] = (16, 16)
  disk_radius: tuple[int, int] = (8, 8)
  num_holes: tuple[int, int] = (1, 6)
  p_square: float = 0.7

  def __post_init__(self):
    for name in ('square_size', 'disk_radius', 'num_holes'):
      lo, hi = getattr(self, name)
      if not 1 <= lo <= hi:
        raise ValueError(f'HoleConfig.{name} must be an inclusive range 1 <= lo <= hi, got {(lo, hi)}')
    if not 0.0 <= self.p_square <= 1.0:
      raise ValueError(f'HoleConfig.p_square must lie in [0, 1], got {self.p_square}')

  def check_fits(self, height: int, width: int) -> None:
    """Raises ValueError when the largest hole cannot be placed inside a height x width image."""
    largest = max(self.square_size[1], 2 * self.disk_radius[1])
    if min(height, width) < largest:
      raise ValueError(f'images of {height}x{width} are too small for holes up to {largest} pixels wide '
                       f'(HoleConfig {self}); use larger crops or smaller holes')


class Holes(NamedTuple):
  """Per-sample hole parameters, each [B, K] with K = the maximum number of holes.

  `row`/`col` are a square's top-left corner or a disk's centre; `size` is a square's side or a disk's radius.
  """
  active: jax.Array
  is_square: jax.Array
  row: jax.Array
  col: jax.Array
  size: jax.Array


@functools.partial(jax.jit, static_argnames=('batch', 'height', 'width', 'config'))
def sample_holes(key: jax.Array, batch: int, height: int, width: int, config: HoleConfig = HoleConfig()) -> Holes:
  """Draws the holes of `batch` masks: a count per image, then shape, size and position per hole."""
  config.check_fits(height, width)
  k_count, k_shape, k_side, k_radius, k_row, k_col = jax.random.split(key, 6)
  max_holes = config.num_holes[1]
  shape = (batch, max_holes)
  count = jax.random.randint(k_count, (batch, 1), config.num_holes[0], config.num_holes[1] + 1)
  active = jnp.arange(max_holes)[None, :] < count
  is_square = jax.random.bernoulli(k_shape, config.p_square, shape)
  side = jax.random.randint(k_side, shape, config.square_size[0], config.square_size[1] + 1)
  radius = jax.random.randint(k_radius, shape, config.disk_radius[0], config.disk_radius[1] + 1)
  size = jnp.where(is_square, side, radius)
  # Inclusive placement ranges: squares [0, dim - side], disk centres [r, dim - r].
  lo = jnp.where(is_square, 0, radius)
  row = jax.random.randint(k_row, shape, lo, jnp.where(is_square, height - side, height - radius) + 1)
  col = jax.random.randint(k_col, shape, lo, jnp.where(is_square, width - side, width - radius) + 1)
  return Holes(active=active, is_square=is_square, row=row, col=col, size=size)


@functools.partial(jax.jit, static_argnames=('height', 'width'))
def rasterize_holes(holes: Holes, height: int, width: int) -> jax.Array:
  """Float32 masks [B,H,W,1]: 0 inside any active hole, 1 elsewhere."""
  rows = jnp.arange(height)[None, None, :, None]
  cols = jnp.arange(width)[None, None, None, :]
  row, col, size = (a[:, :, None, None] for a in (holes.row, holes.col, holes.size))
  in_square = (rows >= row) & (rows < row + size) & (cols >= col) & (cols < col + size)
  in_disk = (rows - row) ** 2 + (cols - col) ** 2 <= size ** 2
  inside = jnp.where(holes.is_square[:, :, None, None], in_square, in_disk) & holes.active[:, :, None, None]
  return 1.0 - jnp.any(inside, axis=1)[..., None].astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=('batch', 'height', 'width', 'config'))
def hole_masks(key: jax.Array, batch: int, height: int, width: int, config: HoleConfig = HoleConfig()) -> jax.Array:
  """Fresh hole masks [B,H,W,1], one per sample (the release's InterventionMasker)."""
  return rasterize_holes(sample_holes(key, batch, height, width, config), height, width)


@functools.partial(jax.jit, static_argnames=('batch', 'height', 'width', 'config'))
def complementary_masks(key: jax.Array, batch: int, height: int, width: int,
                        config: HoleConfig = HoleConfig()) -> tuple[jax.Array, jax.Array]:
  """(m_vis, m_ir): two independent hole masks; where both hide a pixel a coin flip re-opens one of them.

  So no pixel is hidden in both modalities, as in the release (`rand().round()` per pixel).
  """
  k_vis, k_ir, k_coin = jax.random.split(key, 3)
  m_vis = hole_masks(k_vis, batch, height, width, config)
  m_ir = hole_masks(k_ir, batch, height, width, config)
  overlap = (m_vis == 0) & (m_ir == 0)
  keep_vis = jax.random.bernoulli(k_coin, 0.5, m_vis.shape)
  m_vis = jnp.where(overlap & keep_vis, 1.0, m_vis)
  m_ir = jnp.where(overlap & ~keep_vis, 1.0, m_ir)
  return m_vis, m_ir


def view_names(*, complementary: bool = True, random: bool = True, dropout: bool = True) -> tuple[str, ...]:
  """Names of the stacked views, in stack order, for the enabled strategies (clean first)."""
  names = [CLEAN]
  if complementary:
    names.append(COMPLEMENTARY)
  if random:
    names.append(RANDOM)
  if dropout:
    names += [VIS_DROPPED, IR_DROPPED]
  return tuple(names)


@functools.partial(jax.jit, static_argnames=('complementary', 'random', 'dropout', 'config'))
def build_views(key: jax.Array, vis: jax.Array, ir: jax.Array, *, complementary: bool = True, random: bool = True,
                dropout: bool = True, config: HoleConfig = HoleConfig()) -> tuple[jax.Array, jax.Array]:
  """Stacks the clean batch and its interventions into (vis_views, ir_views), each [S,B,H,W,1].

  The order is `view_names(...)`. The complementary and random masks come from fixed sub-keys, so switching one
  strategy off leaves the other's masks unchanged.
  """
  if vis.shape != ir.shape or vis.ndim != 4 or vis.shape[-1] != 1:
    raise ValueError(f'vis and ir must both be [B,H,W,1]; got {vis.shape} and {ir.shape}')
  batch, height, width, _ = vis.shape
  k_comp, k_rand = jax.random.split(key)
  vis_views, ir_views = [vis], [ir]
  if complementary:
    m_vis, m_ir = complementary_masks(k_comp, batch, height, width, config)
    vis_views.append(vis * m_vis.astype(vis.dtype))
    ir_views.append(ir * m_ir.astype(ir.dtype))
  if random:
    m = hole_masks(k_rand, batch, height, width, config).astype(vis.dtype)
    vis_views.append(vis * m)
    ir_views.append(ir * m)
  if dropout:
    vis_views += [jnp.zeros_like(vis), vis]
    ir_views += [ir, jnp.zeros_like(ir)]
  return jnp.stack(vis_views), jnp.stack(ir_views)
