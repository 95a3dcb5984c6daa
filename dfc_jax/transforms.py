"""Warps of images and keypoints in the [-1, 1] pixel-centre coordinates of dfc_jax.model.

Random similarity transforms, for the keypoint equivariance prior (losses.LossConfig): a transform maps a point
p (x, y) to scale * R(angle) p + shift. warp_images moves image content by it; transform_points moves keypoints by
it, so a pose encoder that tracks the content satisfies E_p(warp_images(x, T)) = transform_points(E_p(x), T).

sample_at reads images at arbitrary coordinates (a backward warp by a dense flow, for the keypoint motion of
model.KeypointMotion).
"""
from typing import NamedTuple

import dm_pix
import jax
import jax.numpy as jnp
from jax.scipy import ndimage


class Similarity(NamedTuple):
  matrix: jax.Array  # [N,2,2] scale x rotation, acting on (x, y)
  shift: jax.Array   # [N,2] (x, y)


def random_similarity(key: jax.Array, n: int, *, max_rotation: float, max_log_scale: float,
                      max_shift: float) -> Similarity:
  """n transforms with angle ~ U(±max_rotation) degrees, log scale ~ U(±max_log_scale), shifts ~ U(±max_shift)."""
  angle_key, scale_key, shift_key = jax.random.split(key, 3)
  angle = jnp.deg2rad(jax.random.uniform(angle_key, (n,), minval=-max_rotation, maxval=max_rotation))
  scale = jnp.exp(jax.random.uniform(scale_key, (n,), minval=-max_log_scale, maxval=max_log_scale))
  cos, sin = scale * jnp.cos(angle), scale * jnp.sin(angle)
  matrix = jnp.stack([jnp.stack([cos, -sin], -1), jnp.stack([sin, cos], -1)], -2)
  return Similarity(matrix, jax.random.uniform(shift_key, (n, 2), minval=-max_shift, maxval=max_shift))


def transform_points(points: jax.Array, transform: Similarity) -> jax.Array:
  """Keypoints [N,K,2] (x, y) moved by the transforms."""
  return jnp.einsum('nij,nkj->nki', transform.matrix, points) + transform.shift[:, None, :]


def warp_images(images: jax.Array, transform: Similarity) -> jax.Array:
  """Images [N,H,W,C] whose content is moved by the transforms (bilinear; edges extended outwards)."""
  _, h, w, _ = images.shape
  # Pixel index = half_size * coordinate + centre, per axis; dm_pix indexes (row, column, channel) = (y, x, c).
  half_size = jnp.array([h / 2, w / 2])
  centre = jnp.array([(h - 1) / 2, (w - 1) / 2])
  swap = jnp.array([[0.0, 1.0], [1.0, 0.0]])

  def pull_matrix(matrix, shift):
    # Output index o -> coordinate q -> source coordinate M^-1 (q - shift) -> source index, all in (y, x) order.
    inverse = swap @ jnp.linalg.inv(matrix) @ swap
    linear = half_size[:, None] * inverse / half_size[None, :]
    offset = centre - linear @ centre - half_size * (inverse @ (swap @ shift))
    return jnp.zeros((3, 4)).at[:2, :2].set(linear).at[:2, 3].set(offset).at[2, 2].set(1.0)

  pulls = jax.vmap(pull_matrix)(transform.matrix, transform.shift)
  return jax.vmap(lambda image, pull: dm_pix.affine_transform(image, pull, mode='nearest'))(images, pulls)


def sample_at(images: jax.Array, coordinates: jax.Array) -> jax.Array:
  """images [N,h,w,C] read at coordinates [N,H,W,2] (x, y) -> [N,H,W,C]; bilinear, edges extended outwards.

  Differentiable in both the images and the coordinates.
  """
  _, h, w, _ = images.shape
  rows = (coordinates[..., 1] + 1.0) * (h / 2) - 0.5
  columns = (coordinates[..., 0] + 1.0) * (w / 2) - 0.5
  channel = lambda image, r, c: ndimage.map_coordinates(image, [r, c], order=1, mode='nearest')  # noqa: E731
  per_image = jax.vmap(channel, in_axes=(2, None, None), out_axes=-1)
  return jax.vmap(per_image)(images, rows, columns)
