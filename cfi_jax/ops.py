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
