"""Inference helpers shared by the fuse and evaluation binaries and training-time evaluation.

Fusion runs its convolutions and matmuls at full float32 ('highest') on every platform: at jax's default precision a
TPU rounds their inputs to bfloat16 and an NVIDIA GPU to TF32, and the release's outputs (tests/test_parity.py) and
the metric tables were validated in float32.
"""
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cfi_jax import bucketed
from cfi_jax.model import ISFuse

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def model_from_config(model_config: Mapping[str, Any]) -> ISFuse:
  """ISFuse from a checkpoint's JSON 'model_config' (constructor kwargs; dtype as 'float32' or 'bfloat16')."""
  kwargs = dict(model_config)
  if 'dtype' in kwargs:
    if kwargs['dtype'] not in _DTYPES:
      raise ValueError(f'model_config dtype must be one of {sorted(_DTYPES)}, got {kwargs["dtype"]!r}')
    kwargs['dtype'] = _DTYPES[kwargs['dtype']]
  unknown = set(kwargs) - (set(ISFuse.__dataclass_fields__) - {'parent', 'name'})
  if unknown:
    raise ValueError(f'model_config has keys ISFuse does not take: {sorted(unknown)}')
  return ISFuse(**kwargs)


@functools.partial(jax.jit, static_argnums=0)
def _fuse(model: ISFuse, variables: Mapping[str, Any], vis: jax.Array, ir: jax.Array) -> jax.Array:
  with jax.default_matmul_precision('highest'):
    return model.apply(variables, vis, ir, train=False).fused


def fuse_luma(model: ISFuse, variables: Mapping[str, Any], vis_y: np.ndarray, ir: np.ndarray) -> np.ndarray:
  """Fuses one pair of float HxW images in [0,1] (eval-mode BN); returns the float32 HxW output in [0,1].

  Jitted with the model static, so each distinct image shape compiles once and is cached.
  """
  vis_y = np.asarray(vis_y, np.float32)
  ir = np.asarray(ir, np.float32)
  if vis_y.ndim != 2 or vis_y.shape != ir.shape:
    raise ValueError(f'expected two HxW images of the same shape, got vis {vis_y.shape} and ir {ir.shape}')
  bucketed.check_size(*vis_y.shape)
  fused = _fuse(model, variables, vis_y[None, :, :, None], ir[None, :, :, None])
  return np.asarray(fused[0, :, :, 0])


_fuse_padded = jax.jit(bucketed.forward, static_argnums=0)

DEFAULT_BUCKET_MULTIPLE = 32
# A bucket shape costs a compile (about 1.5 s for the full network on a 2-core CPU) or, with the persistent cache,
# a trace and a cache load (about 0.5 s); a padded pixel costs about 2.5 us to fuse. So one more bucket is worth
# about 250 000 pixels of padding, and a folder of many similar sizes gets a few buckets (see plan_buckets).
DEFAULT_BUCKET_COST_PIXELS = 250_000


class BucketedFuser:
  """Fuses images of any size with one compiled program per bucket shape (sizes rounded up to `multiple`, or to
  the shapes plan() chose for a set of sizes).

  Exact: outputs equal fuse_luma's (unpadded, per-size compiled) to float32 round-off; see cfi_jax/bucketed.py.
  BatchNorm is folded once at construction (eval mode).
  """

  def __init__(self, model: ISFuse, variables: Mapping[str, Any], multiple: int = DEFAULT_BUCKET_MULTIPLE):
    bucketed.bucket_shape(1, 1, multiple)  # Validates the multiple.
    self.model = model
    self.multiple = multiple
    self.folded = bucketed.fold_batchnorm(variables)
    self._planned = {}  # (h, w) -> bucket shape, from plan()

  def plan(self, sizes: Sequence[tuple[int, int]], bucket_cost: float = DEFAULT_BUCKET_COST_PIXELS) -> None:
    """Chooses the bucket shapes for the image sizes about to be fused (fewer compiles, a little more padding);
    sizes not planned get their own rounded-up shape."""
    self._planned.update(bucketed.plan_buckets(sizes, self.multiple, bucket_cost))

  def _bucket(self, height: int, width: int) -> tuple[int, int]:
    return self._planned.get((height, width)) or bucketed.bucket_shape(height, width, self.multiple)

  def fuse_batch(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    """Fuses (vis_y, ir) pairs of float HxW images in [0,1] that share one bucket; returns float32 HxW outputs."""
    shapes = [np.shape(vis_y) for vis_y, _ in pairs]
    for vis_y, ir in pairs:
      if np.ndim(vis_y) != 2 or np.shape(vis_y) != np.shape(ir):
        raise ValueError(f'expected two HxW images of the same shape, got vis {np.shape(vis_y)} and ir '
                         f'{np.shape(ir)}')
      bucketed.check_size(*np.shape(vis_y))
    buckets = {self._bucket(h, w) for h, w in shapes}
    if len(buckets) != 1:
      raise ValueError(f'pairs of sizes {shapes} fall into different buckets {sorted(buckets)}')
    height, width = buckets.pop()
    vis = np.zeros((len(pairs), height, width, 1), np.float32)
    ir = np.zeros_like(vis)
    for i, ((h, w), (vis_y, ir_i)) in enumerate(zip(shapes, pairs)):
      vis[i, :h, :w, 0] = vis_y
      ir[i, :h, :w, 0] = ir_i
    fused = np.asarray(_fuse_padded(self.model, self.folded, vis, ir, np.asarray(shapes, np.int32)))
    return [fused[i, :h, :w, 0] for i, (h, w) in enumerate(shapes)]

  def fuse(self, vis_y: np.ndarray, ir: np.ndarray) -> np.ndarray:
    """fuse_luma's result for one pair, compiled once per bucket instead of once per size."""
    return self.fuse_batch([(np.asarray(vis_y, np.float32), np.asarray(ir, np.float32))])[0]
