"""Shared test helpers: ISFuse variables without paying for a compiled (or op-by-op) flax init on CPU."""
import jax
import jax.numpy as jnp
import numpy as np

from cfi_jax.model import ISFuse


def random_variables(model: ISFuse, seed: int = 0) -> dict:
  """Random {'params','batch_stats'} with ISFuse's structure (from jax.eval_shape) and fan-in scaled kernels."""
  x = jnp.zeros((1, 16, 16, 1), jnp.float32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, x, train=False))
  rng = np.random.default_rng(seed)

  def leaf(path, s):
    name = path[-1].key
    if name == 'kernel':
      return rng.normal(0, 1 / np.sqrt(np.prod(s.shape[:-1])), s.shape).astype(np.float32)
    if name == 'var':
      return rng.uniform(0.5, 1.5, s.shape).astype(np.float32)
    if name == 'scale':
      return (1 + 0.1 * rng.normal(size=s.shape)).astype(np.float32)
    return (0.1 * rng.normal(size=s.shape)).astype(np.float32)  # bias, mean

  return jax.tree_util.tree_map_with_path(leaf, shapes)
