"""A fixed supervised joint regressor: image -> true joints, the keypoint-error judge of DFC-Net's evaluation.

Keypoint error must not be read with the evaluated model's own pose encoder (that is circular: a collapsed encoder
scores the same whatever the generator draws). This is one small network, trained on renders with their true joints
and nothing else, deterministic from its seed; every output (the model's and each trivial baseline's) is judged by
the same one. Pure functions: the caller renders the training images and caches the parameters. It trains and predicts
at full float32 ('highest') on every platform, so that the judge does not depend on the hardware.
"""
import functools
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dfc_jax import model as model_lib


class RegressorConfig(NamedTuple):
  widths: tuple[int, ...] = (16, 32, 64)
  num_steps: int = 800
  batch_size: int = 32
  learning_rate: float = 2e-3
  seed: int = 0


class JointRegressor(nn.Module):
  """Conv stack (one stride-2 stage per width after the first) -> one heatmap per joint -> soft-argmax joints
  [N,J,2] in [-1, 1] of [0, 1] images."""
  num_joints: int
  widths: tuple[int, ...] = (16, 32, 64)

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    x = model_lib.ConvNormAct(self.widths[0])(images * 2.0 - 1.0)
    for width in self.widths[1:]:
      x = model_lib.ConvNormAct(width, stride=2)(x)
      x = model_lib.ConvNormAct(width)(x)
    # Two more convs at the heatmap scale: which limb a pixel belongs to needs context beyond its neighbourhood.
    x = model_lib.ConvNormAct(self.widths[-1])(x)
    x = model_lib.ConvNormAct(self.widths[-1])(x)
    return model_lib.soft_argmax(nn.Conv(self.num_joints, (1, 1))(x).astype(jnp.float32))


def to_pixels(coordinates: jax.Array, size: int) -> jax.Array:
  """[-1, 1] pixel-centre coordinates -> pixels (pixel centres at i + 0.5) of a size x size image."""
  return (coordinates + 1.0) * (size / 2)


def fit(images: np.ndarray, joints: np.ndarray, config: RegressorConfig = RegressorConfig(),
        progress: Callable[[Iterable[int]], Iterable[int]] = iter) -> dict[str, Any]:
  """Regressor parameters trained on images [N,S,S,3] in [0, 1] and their true joints [N,J,2] in pixels
  (L1 in pixels, Adam), deterministic from config.seed. progress wraps the step indices (a caller's progress bar:
  a fit takes minutes on a CPU core)."""
  size = images.shape[1]
  net = JointRegressor(joints.shape[1], config.widths)
  tx = optax.adam(optax.cosine_decay_schedule(config.learning_rate, config.num_steps))
  key = jax.random.key(config.seed, impl='rbg')
  init_key, batch_key = jax.random.split(key)
  params = jax.jit(net.init)(init_key, jnp.zeros((1, *images.shape[1:])))['params']
  images, joints = jnp.asarray(images), jnp.asarray(joints)

  @jax.jit
  def step(params, opt_state, key):
    index = jax.random.randint(key, (config.batch_size,), 0, len(images))
    batch_images, batch_joints = images[index], joints[index]

    def loss_fn(p):
      predicted = to_pixels(net.apply({'params': p}, batch_images), size)
      return jnp.mean(jnp.abs(predicted - batch_joints))

    with jax.default_matmul_precision('highest'):
      loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = tx.init(params)
  for i in progress(range(config.num_steps)):
    params, opt_state, _ = step(params, opt_state, jax.random.fold_in(batch_key, i))
  return jax.device_get(params)


@functools.partial(jax.jit, static_argnames=('num_joints', 'widths'))
def _predict(params, images, *, num_joints: int, widths: tuple[int, ...]):
  with jax.default_matmul_precision('highest'):
    return to_pixels(JointRegressor(num_joints, widths).apply({'params': params}, images), images.shape[1])


def predict(params: dict[str, Any], images: np.ndarray, num_joints: int, config: RegressorConfig = RegressorConfig(),
            batch_size: int = 64) -> np.ndarray:
  """Joints [N,J,2] in pixels of images [N,S,S,3] in [0, 1]."""
  return np.concatenate([np.asarray(_predict(params, images[i:i + batch_size], num_joints=num_joints,
                                             widths=tuple(config.widths)))
                         for i in range(0, len(images), batch_size)])
