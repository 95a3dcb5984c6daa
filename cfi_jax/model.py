"""ISFuse: two-encoder U-Net with a Causal Feature Integrator (CFI) per scale (spec isfuse_cfi.md §1).

Layout is NHWC. Submodule names follow the authors' PyTorch modules (see cfi_jax/torch_import.py for the mapping),
so the released `best.pth` imports one-to-one.
"""
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from cfi_jax import ops

_BN_MOMENTUM = 0.9  # PyTorch momentum 0.1.
_BN_EPSILON = 1e-5
_NEGATIVE_SLOPE = 0.01


class FusionOutput(NamedTuple):
  fused: jax.Array  # [N,H,W,1] in [0,1] (after sigmoid).
  features: tuple  # (x3, x4, x5) decoder features, scales H/4, H/2, H.
  gates: tuple  # (g3, g4, g5), each [N,h,w,1] at its scale, in (0,1).


class ConvBN(nn.Module):
  """Conv (with bias) + BatchNorm + LeakyReLU(0.01), stride 1, 'same' padding."""
  features: int
  kernel_size: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    pad = self.kernel_size // 2
    x = nn.Conv(self.features, (self.kernel_size, self.kernel_size), padding=((pad, pad), (pad, pad)),
                dtype=self.dtype, name='conv')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON,
                     dtype=self.dtype, name='bn')(x)
    return nn.leaky_relu(x, _NEGATIVE_SLOPE)


class DoubleConv(nn.Module):
  """Two ConvBN blocks: the release's encoder stages and decoder `adjust_channels` layers."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = ConvBN(self.features, dtype=self.dtype, name='block0')(x, train=train)
    return ConvBN(self.features, dtype=self.dtype, name='block1')(x, train=train)


def _max_pool2(x: jax.Array) -> jax.Array:
  # VALID floors odd sizes, like PyTorch MaxPool2d(2).
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')


class Encoder(nn.Module):
  """One modality's encoder: features at H, H/2, H/4."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    f1 = DoubleConv(self.features, dtype=self.dtype, name='stage1')(x, train=train)
    f2 = DoubleConv(self.features, dtype=self.dtype, name='stage2')(_max_pool2(f1), train=train)
    f3 = DoubleConv(self.features, dtype=self.dtype, name='stage3')(_max_pool2(f2), train=train)
    return f1, f2, f3


class CFI(nn.Module):
  """Causal Feature Integrator: pooled bidirectional cross-attention, a learned gate, mixing and refine."""
  features: int
  pool_size: int = 8
  use_cfi: bool = True
  dtype: Any = jnp.float32

  def _cross_attention(self, query: jax.Array, keys: jax.Array, values: jax.Array) -> jax.Array:
    """Single-head attention of every pixel of `query` over the pooled tokens of the other modality."""
    n, h, w, c = query.shape
    keys = keys.reshape(n, -1, c)
    values = values.reshape(n, -1, c)
    logits = jnp.einsum('nhwc,nkc->nhwk', query, keys) / math.sqrt(c)
    # Softmax in float32 so the bf16 option stays stable.
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    return jnp.einsum('nhwk,nkc->nhwc', weights, values)

  @nn.compact
  def __call__(self, f_vis: jax.Array, f_ir: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    local = f_vis + f_ir
    if self.use_cfi:
      proj = lambda name: nn.Conv(self.features, (1, 1), dtype=self.dtype, name=name)
      pool = lambda f: ops.adaptive_avg_pool(f, (self.pool_size, self.pool_size))
      # A 1x1 conv with bias commutes with averaging (bin weights sum to 1), so projecting the pooled 8x8 features
      # equals the release's pool(k(f)) and saves four full-resolution projections.
      vis_to_ir = self._cross_attention(proj('q_v')(f_vis), proj('k_i')(pool(f_ir)), proj('v_i')(pool(f_ir)))
      ir_to_vis = self._cross_attention(proj('q_i')(f_ir), proj('k_v')(pool(f_vis)), proj('v_v')(pool(f_vis)))
      complementary = vis_to_ir + ir_to_vis
      g = ConvBN(self.features // 2, dtype=self.dtype, name='gate')(complementary, train=train)
      g = nn.Conv(1, (1, 1), dtype=self.dtype, name='gate_out')(g)
      gate = jax.nn.sigmoid(g.astype(jnp.float32))
      mixed = gate.astype(self.dtype) * complementary + (1 - gate.astype(self.dtype)) * local
    else:
      gate = jnp.ones(local.shape[:-1] + (1,), jnp.float32)
      mixed = local
    return ConvBN(self.features, dtype=self.dtype, name='refine')(mixed, train=train), gate


class ISFuse(nn.Module):
  """The ISFuse fusion network; called as model(vis, ir, train=...) with [N,H,W,1] inputs in [0,1]."""
  features: int = 32
  use_cfi: bool = True
  pool_size: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, vis: jax.Array, ir: jax.Array, *, train: bool) -> FusionOutput:
    vis = vis.astype(self.dtype)
    ir = ir.astype(self.dtype)
    i1, i2, i3 = Encoder(self.features, dtype=self.dtype, name='encoder_ir')(ir, train=train)
    v1, v2, v3 = Encoder(self.features, dtype=self.dtype, name='encoder_vis')(vis, train=train)
    cfi = lambda name: CFI(self.features, pool_size=self.pool_size, use_cfi=self.use_cfi, dtype=self.dtype,
                           name=name)
    x3, g3 = cfi('cfi3')(v3, i3, train=train)
    c4, g4 = cfi('cfi4')(v2, i2, train=train)
    x4 = DoubleConv(self.features, dtype=self.dtype, name='adjust4')(
        ops.resize_bilinear(x3, c4.shape[1:3]) + c4, train=train)
    c5, g5 = cfi('cfi5')(v1, i1, train=train)
    x5 = DoubleConv(self.features, dtype=self.dtype, name='adjust5')(
        ops.resize_bilinear(x4, c5.shape[1:3]) + c5, train=train)
    out = nn.Conv(1, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, name='final')(x5)
    fused = jax.nn.sigmoid(out.astype(jnp.float32))
    return FusionOutput(fused=fused, features=(x3, x4, x5), gates=(g3, g4, g5))
