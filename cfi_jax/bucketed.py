"""Exact ISFuse inference on padded batches: one compiled program per bucket shape instead of one per image size.

Each image is placed in the top-left corner of a zero-filled bucket (H and W rounded up) and its true size travels
as an array, so a new size inside a known bucket compiles nothing. Every size-dependent step of the network is kept
exact on the true extent: the padded region is zeroed after every 3x3 layer (so the next conv sees the zero padding
at the true border), max-pooling floors odd sizes (scale s has the true size h >> s), the CFI's adaptive average
pooling and the decoder's bilinear upsampling use weights built for the true sizes. Cropping the output gives the
unpadded network's result (to float32 round-off).

Inference only: BatchNorm is folded into the preceding convolution (running statistics, as in eval mode), and the
convolutions and matmuls run at full float32 ('highest'), as cfi_jax/inference.py explains.
"""
import itertools
import math
from collections.abc import Iterable, Mapping
from typing import Any

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from cfi_jax import model as model_lib
from cfi_jax import ops

NUM_POOLS = 2  # Two 2x max-pools: an image needs at least 2**NUM_POOLS pixels per side.
MIN_SIZE = 2 ** NUM_POOLS
# Pixels per attention block: 2560 pixels x 64 tokens of float32 logits is 640 KiB, inside a 1 MiB L2 cache.
_ATTENTION_PIXELS = 2560


class ImageTooSmallError(ValueError):
  """An image is smaller than the network's minimum side length (the message names the size and the minimum)."""


def check_size(height: int, width: int, what: str = 'image') -> None:
  """Raises ImageTooSmallError for sizes the network cannot take (a side below MIN_SIZE)."""
  if min(height, width) < MIN_SIZE:
    raise ImageTooSmallError(f'{what} is {width}x{height} (WxH); ISFuse needs at least {MIN_SIZE}x{MIN_SIZE}, '
                             f'since two 2x max-pools must leave one pixel')


def bucket_shape(height: int, width: int, multiple: int) -> tuple[int, int]:
  """(H, W) rounded up to `multiple` (a multiple of 2**NUM_POOLS, so that pooling the bucket stays aligned)."""
  if multiple <= 0 or multiple % MIN_SIZE:
    raise ValueError(f'bucket multiple must be a positive multiple of {MIN_SIZE}, got {multiple}')
  return -(-height // multiple) * multiple, -(-width // multiple) * multiple


def plan_buckets(sizes: Iterable[tuple[int, int]], multiple: int,
                 bucket_cost: float) -> dict[tuple[int, int], tuple[int, int]]:
  """A bucket shape for each (H, W) of a set of images, trading compiled programs against padded pixels.

  Each distinct bucket shape costs `bucket_cost` pixels (one more compile, or cache load, weighed against fusing
  that many more pixels), each image the pixels of its bucket. Starting from every size's own rounded-up shape,
  the two buckets whose merge (into the larger height and the larger width of both) lowers the total cost most are
  merged, until no merge lowers it: a folder of one size keeps its tight bucket, one of many similar sizes gets a
  few buckets.
  """
  members = {}  # bucket -> the sizes of its images, one entry per image
  for height, width in sizes:
    members.setdefault(bucket_shape(height, width, multiple), []).append((height, width))

  def cost(bucket, images):
    return len(images) * bucket[0] * bucket[1] + (bucket_cost if images else 0)

  while len(members) > 1:
    best_saving, best = 0, None
    for a, b in itertools.combinations(members, 2):
      merged = (max(a[0], b[0]), max(a[1], b[1]))
      third = [] if merged in (a, b) else members.get(merged, [])
      saving = (cost(a, members[a]) + cost(b, members[b]) + cost(merged, third)
                - cost(merged, members[a] + members[b] + third))
      if saving > best_saving:
        best_saving, best = saving, (a, b, merged)
    if best is None:
      break
    a, b, merged = best
    images = members.pop(a) + members.pop(b)
    members[merged] = images + members.pop(merged, [])
  return {size: bucket for bucket, images in members.items() for size in images}


def _fold(conv: Mapping[str, Any], bn: Mapping[str, Any] | None, stats: Mapping[str, Any] | None) -> dict:
  """Conv (+ eval-mode BatchNorm) as one conv: kernel * s and (bias - mean) * s + beta, s = gamma / sqrt(var+eps)."""
  kernel = np.asarray(conv['kernel'], np.float64)
  bias = np.asarray(conv['bias'], np.float64)
  if bn is not None:
    eps = model_lib._BN_EPSILON  # pylint: disable=protected-access
    s = np.asarray(bn['scale'], np.float64) / np.sqrt(np.asarray(stats['var'], np.float64) + eps)
    kernel = kernel * s
    bias = (bias - np.asarray(stats['mean'], np.float64)) * s + np.asarray(bn['bias'], np.float64)
  return {'kernel': jnp.asarray(kernel, jnp.float32), 'bias': jnp.asarray(bias, jnp.float32)}


def fold_batchnorm(variables: Mapping[str, Any]) -> dict:
  """The ISFuse parameter tree with every ConvBN's BatchNorm folded into its conv (nested dicts of {kernel, bias})."""
  def walk(params, stats):
    if 'conv' in params and 'bn' in params:
      return _fold(params['conv'], params['bn'], stats['bn'])
    if 'kernel' in params:
      return _fold(params, None, None)
    return {k: walk(v, stats.get(k, {}) if stats else {}) for k, v in params.items()}
  return walk(variables['params'], variables.get('batch_stats', {}))


def _conv(x: jax.Array, p: Mapping[str, jax.Array], dtype) -> jax.Array:
  kernel = p['kernel'].astype(dtype)
  pad = kernel.shape[0] // 2
  y = lax.conv_general_dilated(x.astype(dtype), kernel, (1, 1), ((pad, pad), (pad, pad)),
                               dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return y + p['bias'].astype(dtype)


def _leaky_relu(x: jax.Array) -> jax.Array:
  return jax.nn.leaky_relu(x, model_lib._NEGATIVE_SLOPE)  # pylint: disable=protected-access


def _max_pool2(x: jax.Array) -> jax.Array:
  return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID')


class _Scale:
  """True sizes and the padded-region mask of one scale."""

  def __init__(self, sizes: jax.Array, level: int, padded: tuple[int, int], dtype):
    self.h, self.w = sizes[:, 0] >> level, sizes[:, 1] >> level
    self.padded = padded
    self.mask = ops.true_extent_mask(self.h, self.w, padded).astype(dtype)


def forward(model: model_lib.ISFuse, folded: Mapping[str, Any], vis: jax.Array, ir: jax.Array,
            sizes: jax.Array) -> jax.Array:
  """Fused [N,H,W,1] of padded [N,H,W,1] inputs (zero outside each image) with true sizes [N, 2] = (h, w).

  H and W must be multiples of 2**NUM_POOLS. Values outside each true extent are meaningless (crop them).
  """
  with jax.default_matmul_precision('highest'):
    return _forward(model, folded, vis, ir, sizes)


def _forward(model, folded, vis, ir, sizes):
  dtype = model.dtype
  padded = vis.shape[1:3]
  scales = [_Scale(sizes, level, (padded[0] >> level, padded[1] >> level), dtype) for level in range(NUM_POOLS + 1)]

  def conv_bn(x, p, scale):
    return _leaky_relu(_conv(x, p, dtype)) * scale.mask

  def double_conv(x, p, scale):
    return conv_bn(conv_bn(x, p['block0'], scale), p['block1'], scale)

  def encoder(x, p):
    f1 = double_conv(x, p['stage1'], scales[0])
    f2 = double_conv(_max_pool2(f1) * scales[1].mask, p['stage2'], scales[1])
    f3 = double_conv(_max_pool2(f2) * scales[2].mask, p['stage3'], scales[2])
    return f1, f2, f3

  def fold_query(query_p, keys):
    """The query projection folded into the pooled keys, [c, tokens] and [tokens] per image:
    (f Wq + bq) K^T / sqrt(c) = f (Wq K^T / sqrt(c)) + bq K^T / sqrt(c), so no full-resolution query map is made."""
    n, _, _, c = keys.shape
    keys = keys.reshape(n, -1, c)
    scale = 1 / math.sqrt(c)
    kernel = jnp.einsum('cd,nkd->nck', query_p['kernel'][0, 0].astype(dtype), keys) * scale
    bias = jnp.einsum('d,nkd->nk', query_p['bias'].astype(dtype), keys) * scale
    return kernel, bias

  def attention(features, folded_keys, values):
    """Attention of every pixel's query over the other modality's pooled tokens (values: [N, tokens, c])."""
    key_kernel, key_bias = folded_keys
    logits = jnp.einsum('nhwc,nck->nhwk', features, key_kernel) + key_bias[:, None, None, :]
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(dtype)
    return jnp.einsum('nhwk,nkc->nhwc', weights, values)

  def cross_attention(f_vis, f_ir, pooled_vis, pooled_ir, p):
    n, h, w, c = f_vis.shape
    tokens = lambda pooled, name: _conv(pooled, p[name], dtype)
    keys_i, keys_v = fold_query(p['q_v'], tokens(pooled_ir, 'k_i')), fold_query(p['q_i'], tokens(pooled_vis, 'k_v'))
    values_i = tokens(pooled_ir, 'v_i').reshape(n, -1, c)
    values_v = tokens(pooled_vis, 'v_v').reshape(n, -1, c)
    # Per pixel the attention makes as many logits and weights as there are tokens; over a whole image those
    # arrays dwarf the caches, so it runs on blocks of rows whose logits fit a core's L2 cache (at 480x640 on one
    # core about 3x faster than whole images or 8-row blocks; on two, as fast as whole images). The last block is
    # clamped to end at the last row (dynamic_slice's rule): it recomputes a few rows of the one before, alike.
    rows = max(1, min(h, _ATTENTION_PIXELS // w))

    def block(i, out):
      take = lambda f: lax.dynamic_slice_in_dim(f, i * rows, rows, axis=1)
      mixed = attention(take(f_vis), keys_i, values_i) + attention(take(f_ir), keys_v, values_v)
      return lax.dynamic_update_slice_in_dim(out, mixed, i * rows, axis=1)

    return lax.fori_loop(0, -(-h // rows), block, jnp.zeros((n, h, w, c), dtype))

  def cfi(f_vis, f_ir, p, scale):
    local = f_vis + f_ir
    if model.use_cfi:
      pool = lambda f: ops.adaptive_avg_pool_padded(f, scale.h, scale.w, (model.pool_size, model.pool_size))
      complementary = cross_attention(f_vis, f_ir, pool(f_vis), pool(f_ir), p) * scale.mask
      # The gate's own padded values only reach 1x1 layers and multiply zeros, so it needs no mask.
      g = _conv(_leaky_relu(_conv(complementary, p['gate'], dtype)), p['gate_out'], dtype)
      gate = jax.nn.sigmoid(g.astype(jnp.float32)).astype(dtype)
      mixed = gate * complementary + (1 - gate) * local
    else:
      mixed = local
    return conv_bn(mixed, p['refine'], scale)

  def upsample(x, src, dst):
    return ops.resize_bilinear_padded(x, src.h, src.w, dst.h, dst.w, dst.padded).astype(dtype) * dst.mask

  i1, i2, i3 = encoder(ir.astype(dtype), folded['encoder_ir'])
  v1, v2, v3 = encoder(vis.astype(dtype), folded['encoder_vis'])
  x3 = cfi(v3, i3, folded['cfi3'], scales[2])
  c4 = cfi(v2, i2, folded['cfi4'], scales[1])
  x4 = double_conv(upsample(x3, scales[2], scales[1]) + c4, folded['adjust4'], scales[1])
  c5 = cfi(v1, i1, folded['cfi5'], scales[0])
  x5 = double_conv(upsample(x4, scales[1], scales[0]) + c5, folded['adjust5'], scales[0])
  return jax.nn.sigmoid(_conv(x5, folded['final'], dtype).astype(jnp.float32))


