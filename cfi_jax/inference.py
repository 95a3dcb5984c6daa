"""Inference helpers shared by the fuse and evaluation binaries and training-time evaluation."""
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

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
  return model.apply(variables, vis, ir, train=False).fused


def fuse_luma(model: ISFuse, variables: Mapping[str, Any], vis_y: np.ndarray, ir: np.ndarray) -> np.ndarray:
  """Fuses one pair of float HxW images in [0,1] (eval-mode BN); returns the float32 HxW output in [0,1].

  Jitted with the model static, so each distinct image shape compiles once and is cached.
  """
  vis_y = np.asarray(vis_y, np.float32)
  ir = np.asarray(ir, np.float32)
  if vis_y.ndim != 2 or vis_y.shape != ir.shape:
    raise ValueError(f'expected two HxW images of the same shape, got vis {vis_y.shape} and ir {ir.shape}')
  fused = _fuse(model, variables, vis_y[None, :, :, None], ir[None, :, :, None])
  return np.asarray(fused[0, :, :, 0])
