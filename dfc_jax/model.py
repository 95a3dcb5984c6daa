"""DFC-Net (design in shared/specs/dfc_net.md): keypoint pose encoder, amplifier, static encoder, generator, PatchGAN.

Images are NHWC in [-1, 1]. The source image gives the pose, the target image the static appearance:
output = G(A(E_p(source)), E_s(target)). Keypoint coordinates are (x, y) in [-1, 1] at pixel centres.
"""
import math
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dfc_jax import transforms

AMPLIFIERS = ('sharpen', 'gain', 'both', 'off')
INJECTIONS = ('concat', 'spade')
NORMS = ('instance', 'none')
# Variance-preserving initialisation for convs followed by leaky_relu(x, 0.2) (He et al. 2015).
_HE_LEAKY_RELU = nn.initializers.variance_scaling(2.0 / (1.0 + 0.2**2), 'fan_in', 'truncated_normal')


def pixel_centres(n: int) -> jax.Array:
  """Coordinates of n pixel centres in [-1, 1] (the convention of every keypoint here)."""
  return (2.0 * jnp.arange(n, dtype=jnp.float32) + 1.0) / n - 1.0


def soft_argmax(logits: jax.Array) -> jax.Array:
  """Expected (x, y) of the spatial softmax of heatmap logits [N,h,w,K] -> keypoints [N,K,2] in [-1, 1].

  One softmax over all h x w pixels (not Jakab et al.'s separable one over rows and columns), read out through its
  x and y marginals.
  """
  n, h, w, k = logits.shape
  probs = jax.nn.softmax(logits.reshape(n, h * w, k), axis=1).reshape(n, h, w, k)
  x = jnp.einsum('nwk,w->nk', probs.sum(axis=1), pixel_centres(w))
  y = jnp.einsum('nhk,h->nk', probs.sum(axis=2), pixel_centres(h))
  return jnp.stack([x, y], axis=-1)


def coordinate_grid(h: int, w: int) -> jax.Array:
  """[h,w,2] (x, y) coordinates of the pixel centres of an h x w grid."""
  return jnp.stack(jnp.meshgrid(pixel_centres(w), pixel_centres(h)), axis=-1)


def render_gaussians(keypoints: jax.Array, shape: tuple[int, int], sigma: float) -> jax.Array:
  """Isotropic Gaussian maps exp(-|p - k|^2 / (2 sigma^2)) of keypoints [N,K,2] on an (h, w) grid -> [N,h,w,K].

  (Jakab et al.'s maps exp(-|p - k|^2 / sigma^2) are this one with sigma / sqrt(2).)"""
  h, w = shape
  gx = jnp.exp(-(pixel_centres(w)[None, :, None] - keypoints[:, None, :, 0]) ** 2 / (2 * sigma**2))  # [N,w,K]
  gy = jnp.exp(-(pixel_centres(h)[None, :, None] - keypoints[:, None, :, 1]) ** 2 / (2 * sigma**2))  # [N,h,K]
  return gy[:, :, None, :] * gx[:, None, :, :]


class ConvNormAct(nn.Module):
  """Conv -> instance norm (unless normalize is False) -> leaky ReLU.

  Instance norm keeps samples independent under any sharding; it also removes any per-channel constant, so the conv
  feeding it has no bias. That removal also erases an image's absolute colours, which is why the static encoder and
  the generator can run without it (DFCNet.norm). Without it, the conv gets He initialisation for the leaky ReLU:
  with the default (LeCun) one every layer shrinks the signal by ~0.7, so through the encoder and generator's ~16
  layers the output hardly depends on the input at first and training starts very slowly.
  """
  features: int
  kernel: int = 3
  stride: int = 1
  normalize: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.lecun_normal() if self.normalize else _HE_LEAKY_RELU
    x = nn.Conv(self.features, (self.kernel, self.kernel), strides=self.stride, use_bias=not self.normalize,
                kernel_init=init, dtype=self.dtype)(x)
    if self.normalize:
      x = nn.InstanceNorm(dtype=self.dtype)(x)
    return nn.leaky_relu(x, 0.2)


class PoseEncoder(nn.Module):
  """Conv stack (stride 1, then one stride-2 stage per further width) -> K heatmap logits at 1/2^(stages)."""
  widths: Sequence[int] = (32, 64, 128, 256)
  num_keypoints: int = 16
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = ConvNormAct(self.widths[0], dtype=self.dtype)(x)
    for width in self.widths[1:]:
      x = ConvNormAct(width, stride=2, dtype=self.dtype)(x)
      x = ConvNormAct(width, dtype=self.dtype)(x)
    return nn.Conv(self.num_keypoints, (1, 1), dtype=self.dtype)(x).astype(jnp.float32)


class StaticEncoder(nn.Module):
  """Conv stack returning features at scales 1, 1/2, 1/4, 1/8 (one per width)."""
  widths: Sequence[int] = (32, 64, 128, 256)
  normalize: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x) -> tuple[jax.Array, ...]:
    block = lambda width, stride=1: ConvNormAct(width, stride=stride, normalize=self.normalize,  # noqa: E731
                                                dtype=self.dtype)
    x = block(self.widths[0])(x)
    x = block(self.widths[0])(x)
    features = [x]
    for width in self.widths[1:]:
      x = block(width, 2)(x)
      x = block(width)(x)
      features.append(x)
    return tuple(features)


class Spade(nn.Module):
  """SPADE-style modulation: x (instance-normalised when normalize) scaled and shifted by convolutions of the pose
  maps."""
  features: int
  normalize: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, pose_maps):
    if self.normalize:
      x = nn.InstanceNorm(use_scale=False, use_bias=False, dtype=self.dtype)(x)
    hidden = nn.relu(nn.Conv(self.features, (3, 3), dtype=self.dtype)(pose_maps))
    gamma = nn.Conv(self.features, (3, 3), dtype=self.dtype)(hidden)
    beta = nn.Conv(self.features, (3, 3), dtype=self.dtype)(hidden)
    return x * (1 + gamma) + beta


class Generator(nn.Module):
  """Decoder from the deepest static features to full resolution. Every scale takes the pose maps at that scale
  (concatenated, or as SPADE modulation); the coarsest static_levels scales (all by default) also take the static
  skip features. tanh RGB output."""
  widths: Sequence[int] = (32, 64, 128, 256)
  injection: str = 'concat'
  normalize: bool = True
  static_levels: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, static: Sequence[jax.Array], pose_maps: Sequence[jax.Array]):
    levels = len(self.widths)
    static_levels = levels if self.static_levels is None else self.static_levels
    block = lambda width: ConvNormAct(width, normalize=self.normalize, dtype=self.dtype)  # noqa: E731
    spade = lambda width: Spade(width, normalize=self.normalize, dtype=self.dtype)  # noqa: E731
    x = static[-1]
    for level in reversed(range(levels)):
      width = self.widths[level]
      if level < levels - 1:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # nearest-neighbour x2
        if level >= levels - static_levels:
          x = jnp.concatenate([x, static[level]], axis=-1)
        x = block(width)(x)
      pose = pose_maps[level].astype(x.dtype)
      if self.injection == 'concat':
        x = block(width)(jnp.concatenate([x, pose], axis=-1))
        x = block(width)(x)
      else:
        x = nn.leaky_relu(spade(x.shape[-1])(x, pose), 0.2)
        x = nn.Conv(width, (3, 3), dtype=self.dtype)(x)
        x = nn.leaky_relu(spade(width)(x, pose), 0.2)
    return jnp.tanh(nn.Conv(3, (3, 3), dtype=self.dtype)(x).astype(jnp.float32))


class KeypointMotion(nn.Module):
  """Moves the appearance image's features into the pose (DFCNet.warp; not in the design).

  Zero-order keypoint motion, as in Monkey-Net and the first-order motion model (Siarohin et al., CVPR 2019 and
  NeurIPS 2019): near pose keypoint k, the output reads the appearance features at its own position moved by
  (appearance keypoint k - pose keypoint k). Soft masks choose the keypoint at every location, with one more mask
  for no motion (the background). A conv stack predicts them at 1/`scale` resolution from the Gaussian maps of the
  pose keypoints and of the keypoint motion, and from the appearance image moved by each candidate; the masks are
  resized to every feature scale.
  """
  num_keypoints: int
  width: int = 64
  depth: int = 4
  scale: int = 4
  # Wider than the generator's maps, so that every location on the body is near some keypoint's map.
  sigma: float = 0.15
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pose_keypoints: jax.Array, appearance_keypoints: jax.Array, appearance: jax.Array,
               features: Sequence[jax.Array]) -> list[jax.Array]:
    n, h, w, c = appearance.shape
    hs, ws = h // self.scale, w // self.scale
    offsets = appearance_keypoints - pose_keypoints  # [N,K,2]: where each keypoint's neighbourhood reads from
    grid = coordinate_grid(hs, ws)
    small = jax.image.resize(appearance, (n, hs, ws, c), 'linear')
    candidates = grid[None, None] + offsets[:, :, None, None, :]  # [N,K,hs,ws,2]
    moved = jax.vmap(transforms.sample_at, in_axes=(None, 1), out_axes=3)(small, candidates)  # [N,hs,ws,K,C]
    pose_maps = render_gaussians(pose_keypoints, (hs, ws), self.sigma)
    x = jnp.concatenate([pose_maps, pose_maps - render_gaussians(appearance_keypoints, (hs, ws), self.sigma), small,
                         moved.reshape(n, hs, ws, self.num_keypoints * c)], axis=-1)
    for _ in range(self.depth):
      x = ConvNormAct(self.width, normalize=False, dtype=self.dtype)(x)
    masks = jax.nn.softmax(nn.Conv(self.num_keypoints + 1, (3, 3), dtype=self.dtype)(x).astype(jnp.float32))
    warped = []
    for f in features:
      fh, fw = f.shape[1:3]
      m = jax.image.resize(masks, (n, fh, fw, self.num_keypoints + 1), 'linear')
      flow = coordinate_grid(fh, fw)[None] + jnp.einsum('nhwk,nkc->nhwc', m[..., 1:], offsets)
      # Coordinates stay float32: in bfloat16 they would be off by up to a quarter pixel at 128x128.
      warped.append(transforms.sample_at(f, flow).astype(f.dtype))
    return warped


class PoseCode(NamedTuple):
  logits: jax.Array     # [N,h,w,K] heatmap logits (after sharpening)
  keypoints: jax.Array  # [N,K,2] (x, y) in [-1, 1]


class DFCNet(nn.Module):
  """Pose encoder + keypoint amplifier + static encoder + generator.

  Attributes:
    num_keypoints: K soft-argmax keypoints.
    pose_widths / widths: channel widths of the pose encoder and of the static encoder and generator; one scale
      per width (1, 1/2, 1/4, 1/8 for four).
    amplifier: 'sharpen' (heatmap logits x sharpen_factor before the softmax), 'gain' (rendered pose maps x a
      learnable per-keypoint gain initialised to gain_init), 'both', or 'off' (ablation).
    learn_sharpen: the sharpening factor is a learned parameter (exp of 'log_sharpen', starting at
      sharpen_factor): an inverse softmax temperature the heatmaps can raise as they come to agree on a point.
    sigma: Gaussian width of the rendered keypoints, in [-1, 1] units.
    injection: 'concat' or 'spade' (how the generator takes the pose maps).
    norm: 'instance' or 'none': normalisation in the static encoder and the generator. Instance norm removes every
      feature map's mean, hence the absolute colours of the target (its background, its clothes), which the output
      must reproduce; the pose encoder, which should ignore colours, always uses it.
    static_levels: how many of the generator's coarsest scales take static skip features (None: all). Fine-scale
      static features carry the target's own silhouette, which the generator can copy instead of following the
      pose maps.
    warp: not in the design. The static features are moved into the source's pose by the keypoints' motion from
      the target to the source (KeypointMotion) before the generator takes them, so the generator no longer has
      to learn to carry the target's appearance across the image.
  """
  num_keypoints: int = 16
  pose_widths: Sequence[int] = (32, 64, 128, 256)
  widths: Sequence[int] = (32, 64, 128, 256)
  amplifier: str = 'gain'
  sharpen_factor: float = 4.0
  learn_sharpen: bool = False
  gain_init: float = 10.0
  sigma: float = 0.1
  injection: str = 'concat'
  norm: str = 'instance'
  static_levels: int | None = None
  warp: bool = False
  dtype: Any = jnp.float32

  def setup(self):
    if self.amplifier not in AMPLIFIERS:
      raise ValueError(f'amplifier must be one of {AMPLIFIERS}, got {self.amplifier!r}')
    if self.injection not in INJECTIONS:
      raise ValueError(f'injection must be one of {INJECTIONS}, got {self.injection!r}')
    if self.norm not in NORMS:
      raise ValueError(f'norm must be one of {NORMS}, got {self.norm!r}')
    if self.static_levels is not None and not 1 <= self.static_levels <= len(self.widths):
      raise ValueError(f'static_levels must be in 1..{len(self.widths)} (the number of widths) or None, '
                       f'got {self.static_levels}')
    normalize = self.norm == 'instance'
    self.pose_encoder = PoseEncoder(self.pose_widths, self.num_keypoints, dtype=self.dtype)
    self.static_encoder = StaticEncoder(self.widths, normalize, dtype=self.dtype)
    self.generator = Generator(self.widths, self.injection, normalize, self.static_levels, dtype=self.dtype)
    if self.amplifier in ('gain', 'both'):
      self.gain = self.param('gain', nn.initializers.constant(self.gain_init), (self.num_keypoints,))
    if self.learn_sharpen and self.amplifier in ('sharpen', 'both'):
      self.log_sharpen = self.param('log_sharpen', nn.initializers.constant(math.log(self.sharpen_factor)), ())
    if self.warp:
      self.motion = KeypointMotion(self.num_keypoints, dtype=self.dtype)

  def encode_pose(self, image: jax.Array) -> PoseCode:
    logits = self.pose_encoder(image)
    if self.amplifier in ('sharpen', 'both'):
      logits = logits * (jnp.exp(self.log_sharpen) if self.learn_sharpen else self.sharpen_factor)
    return PoseCode(logits, soft_argmax(logits))

  def encode_static(self, image: jax.Array) -> tuple[jax.Array, ...]:
    return self.static_encoder(image)

  def pose_maps(self, keypoints: jax.Array, image_size: tuple[int, int]) -> list[jax.Array]:
    """Amplified Gaussian pose maps at every generator scale (full resolution first)."""
    h, w = image_size
    maps = []
    for level in range(len(self.widths)):
      m = render_gaussians(keypoints, (h // 2**level, w // 2**level), self.sigma)
      if self.amplifier in ('gain', 'both'):
        m = m * self.gain
      maps.append(m)
    return maps

  def decode(self, keypoints: jax.Array, static: Sequence[jax.Array], appearance_keypoints: jax.Array | None = None,
             appearance: jax.Array | None = None) -> jax.Array:
    """The image with `static`'s appearance in the pose of `keypoints`. With warp, also needs the image the static
    features came from (`appearance`) and its keypoints."""
    if self.warp:
      if appearance_keypoints is None or appearance is None:
        raise ValueError('DFCNet(warp=True).decode needs the appearance image and its keypoints')
      static = self.motion(keypoints, appearance_keypoints, appearance, static)
    return self.generator(static, self.pose_maps(keypoints, static[0].shape[1:3]))

  def __call__(self, source: jax.Array, target: jax.Array) -> jax.Array:
    """The target's appearance in the source's pose, [N,H,W,3] in [-1, 1]."""
    if not self.warp:
      return self.decode(self.encode_pose(source).keypoints, self.encode_static(target))
    keypoints = self.encode_pose(jnp.concatenate([source, target])).keypoints
    n = source.shape[0]
    return self.decode(keypoints[:n], self.encode_static(target), keypoints[n:], target)


class PatchDiscriminator(nn.Module):
  """PatchGAN on (image, condition) concatenated; returns its intermediate features and the patch logits last."""
  width: int = 64
  num_layers: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x) -> list[jax.Array]:
    outputs = []
    x = nn.leaky_relu(nn.Conv(self.width, (4, 4), strides=2, dtype=self.dtype)(x), 0.2)
    outputs.append(x)
    for i in range(1, self.num_layers):
      x = ConvNormAct(self.width * 2**i, kernel=4, stride=2 if i < self.num_layers - 1 else 1, dtype=self.dtype)(x)
      outputs.append(x)
    outputs.append(nn.Conv(1, (4, 4), dtype=self.dtype)(x).astype(jnp.float32))
    return outputs


class MultiScaleDiscriminator(nn.Module):
  """PatchGANs at full and successively halved resolutions, each conditioned on the target image and, with
  pose_condition, on Gaussian maps of the pose keypoints (as in Monkey-Net and FOMM): seeing only the target, it
  cannot tell an output in the wrong pose from a real image."""
  num_scales: int = 2
  width: int = 64
  num_layers: int = 3
  pose_condition: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, image: jax.Array, condition: jax.Array, pose_maps: jax.Array | None = None
               ) -> list[list[jax.Array]]:
    if self.pose_condition:
      if pose_maps is None:
        raise ValueError('MultiScaleDiscriminator(pose_condition=True) needs the pose maps')
      condition = jnp.concatenate([condition, pose_maps.astype(condition.dtype)], axis=-1)
    x = jnp.concatenate([image, condition], axis=-1)
    results = []
    for scale in range(self.num_scales):
      if scale:
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
      results.append(PatchDiscriminator(self.width, self.num_layers, dtype=self.dtype)(x))
    return results


def generator_from_config(config: dict[str, Any]) -> DFCNet:
  """DFCNet from its JSON constructor kwargs (a checkpoint's model_config['generator'])."""
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
  return DFCNet(**kwargs)


def discriminator_from_config(config: dict[str, Any]) -> MultiScaleDiscriminator:
  return MultiScaleDiscriminator(**config)
