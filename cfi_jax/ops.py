"""Resampling ops with PyTorch semantics, so imported weights reproduce the release for any image size."""
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def resize_bilinear(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """Bilinear resize of NHWC `x` to spatial `size` = (h, w).

  Matches PyTorch `F.interpolate(mode='bilinear', align_corners=False)` (half-pixel centres, edge clamping, no
  antialiasing) for up- and downsampling; jax.image.resize with antialias=False implements exactly that.
  """
  h, w = size
  n, _, _, c = x.shape
  return jax.image.resize(x, (n, h, w, c), method='linear', antialias=False)


def _pool_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] averaging matrix with PyTorch's adaptive bins [floor(i*in/out), ceil((i+1)*in/out))."""
  mat = np.zeros((out_size, in_size), np.float32)
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)
    mat[i, start:end] = 1.0 / (end - start)
  return mat


def adaptive_avg_pool(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """Adaptive average pooling of NHWC `x` to (oh, ow) with PyTorch's (possibly overlapping) bin edges.

  Works for any input size, including sizes not divisible by the output and smaller than it (bins then repeat
  input pixels, as in PyTorch). Written as two small averaging matrices so it stays one fused einsum.
  """
  oh, ow = size
  _, h, w, _ = x.shape
  rows = jnp.asarray(_pool_matrix(h, oh), x.dtype)
  cols = jnp.asarray(_pool_matrix(w, ow), x.dtype)
  return jnp.einsum('ih,nhwc,jw->nijc', rows, x, cols, precision=jax.lax.Precision.HIGHEST)


# Padded batches: each image sits in the top-left corner of a larger zero-filled array and `sizes` ([N] int arrays,
# traced, so new sizes do not recompile) give its true extent. The results equal the ops above on the true extent.


def true_extent_mask(sizes_h: jax.Array, sizes_w: jax.Array, shape: Sequence[int]) -> jax.Array:
  """[N, H, W, 1] float mask, 1 inside each image's true (h, w) extent of a padded (H, W) array."""
  rows = jnp.arange(shape[0])[None, :] < sizes_h[:, None]
  cols = jnp.arange(shape[1])[None, :] < sizes_w[:, None]
  return (rows[:, :, None] & cols[:, None, :])[..., None].astype(jnp.float32)


def _true_pool_matrix(in_sizes: jax.Array, padded_in: int, out_size: int) -> jax.Array:
  """[N, out, padded_in] adaptive-pooling weights for each true input size (zero on the padding)."""
  i = jnp.arange(out_size)[None, :, None]
  n = in_sizes[:, None, None]
  start = (i * n) // out_size
  end = -((-(i + 1) * n) // out_size)
  pos = jnp.arange(padded_in)[None, None, :]
  return jnp.where((pos >= start) & (pos < end), 1.0 / jnp.maximum(end - start, 1), 0.0)


def adaptive_avg_pool_padded(x: jax.Array, sizes_h: jax.Array, sizes_w: jax.Array,
                             size: Sequence[int]) -> jax.Array:
  """adaptive_avg_pool over each image's true extent of a padded NHWC batch."""
  oh, ow = size
  rows = _true_pool_matrix(sizes_h, x.shape[1], oh).astype(x.dtype)
  cols = _true_pool_matrix(sizes_w, x.shape[2], ow).astype(x.dtype)
  # Rows first, as two contractions: H is the outer axis of NHWC, so the full-size one reads x in place (one
  # three-operand einsum let XLA:CPU transpose all of x first, which cost more than the pooling).
  pooled_rows = jnp.einsum('nih,nhwc->niwc', rows, x, precision=jax.lax.Precision.HIGHEST)
  return jnp.einsum('njw,niwc->nijc', cols, pooled_rows, precision=jax.lax.Precision.HIGHEST)


def _resize_axis_padded(x: jax.Array, axis: int, in_sizes: jax.Array, out_sizes: jax.Array,
                        padded_out: int) -> jax.Array:
  """Bilinear (align_corners=False) resize of one spatial axis from each true in-size to its true out-size."""
  scale = in_sizes.astype(jnp.float32) / out_sizes.astype(jnp.float32)
  dst = jnp.arange(padded_out, dtype=jnp.float32)[None, :]
  src = jnp.maximum((dst + 0.5) * scale[:, None] - 0.5, 0.0)  # PyTorch's source index, clamped at 0.
  i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), in_sizes[:, None] - 1)
  i1 = jnp.minimum(i0 + 1, in_sizes[:, None] - 1)
  frac = (src - i0)
  shape = [x.shape[0], 1, 1, 1]
  shape[axis] = padded_out
  gather = lambda idx: jnp.take_along_axis(x, idx.reshape(shape), axis=axis)
  frac = frac.reshape(shape).astype(x.dtype)
  return gather(i0) * (1 - frac) + gather(i1) * frac


def resize_bilinear_padded(x: jax.Array, in_h: jax.Array, in_w: jax.Array, out_h: jax.Array, out_w: jax.Array,
                           padded_size: Sequence[int]) -> jax.Array:
  """resize_bilinear of each image's true (in_h, in_w) extent to its true (out_h, out_w), in a padded array.

  Values outside the true output extent are arbitrary (mask them).
  """
  x = _resize_axis_padded(x, 1, in_h, out_h, padded_size[0])
  return _resize_axis_padded(x, 2, in_w, out_w, padded_size[1])
