"""remat='views' (one view's forward recomputed at a time in the backward pass) computes the plain step's update."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from cfi_jax import losses
from cfi_jax import steps as cfi_steps
from cfi_jax.model import ISFuse

SHAPE = (2, 32, 32, 1)
MODEL = ISFuse(features=8)


def _smooth_batch() -> dict[str, jnp.ndarray]:
  # Smooth, distinct scenes: no near-ties in the max-pool windows, whose subgradient would depend on rounding.
  yy, xx = np.mgrid[0:32, 0:32] / 31.0
  vis = np.stack([0.5 + 0.4 * np.sin(6 * xx) * np.cos(4 * yy), 0.3 + 0.5 * xx * yy])
  ir = np.stack([0.1 + 0.8 * np.exp(-8 * ((xx - 0.4) ** 2 + (yy - 0.6) ** 2)), 0.9 - 0.6 * yy])
  return {'vis': jnp.asarray(vis[..., None], jnp.float32), 'ir': jnp.asarray(ir[..., None], jnp.float32)}


def test_recomputed_views_give_the_plain_steps_update():
  """Same losses, gradients (plain SGD makes the update the gradient) and running statistics."""
  batch = _smooth_batch()
  state = cfi_steps.create_train_state(jax.random.key(0), MODEL, optax.sgd(1.0), SHAPE)
  new = {}
  for remat in cfi_steps.REMAT_MODES:
    step = jax.jit(functools.partial(cfi_steps.train_step, model=MODEL, loss_config=losses.LossConfig(),
                                     view_batching='loop', remat=remat))
    new[remat] = step(state, batch, jax.random.key(4))
  (plain, plain_metrics), (recomputed, recomputed_metrics) = new['none'], new['views']
  for name in plain_metrics:
    np.testing.assert_allclose(recomputed_metrics[name], plain_metrics[name], rtol=1e-5, err_msg=name)
  grad = lambda s: optax.tree.sub(state.params, s.params)  # noqa: E731
  # The dropped-modality views are ill-conditioned (cfi_jax/cfi_steps.py), so the gradient is compared as a whole.
  assert optax.tree.norm(optax.tree.sub(grad(recomputed), grad(plain))) < 1e-4 * optax.tree.norm(grad(plain))
  flat_plain, flat_recomputed = (traverse_util.flatten_dict(s.batch_stats) for s in (plain, recomputed))
  for path, value in flat_plain.items():
    np.testing.assert_allclose(flat_recomputed[path], value, rtol=1e-5, atol=1e-6, err_msg='/'.join(path))


def test_unknown_remat_mode_is_refused():
  batch = _smooth_batch()
  state = cfi_steps.create_train_state(jax.random.key(0), MODEL, optax.sgd(1.0), SHAPE)
  with pytest.raises(ValueError, match='remat'):
    cfi_steps.train_step(state, batch, jax.random.key(4), model=MODEL, loss_config=losses.LossConfig(), remat='all')
