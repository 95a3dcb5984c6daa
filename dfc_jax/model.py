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
  """Conv stack (stride 1, then one stride-2 stage per further width) -> K heatmap logits at 1/2^(stages - upsample).

  upsample: decoder stages after the coarsest one, each a 2x nearest upsampling concatenated with the encoder's
  features at that scale (an hourglass), so the heatmaps can be finer than the stage whose receptive field covers the
  whole body: at 64 px, widths (16, 32, 64, 64) with upsample=1 give 16x16 heatmaps from an ~45-px field.
  """
  widths: Sequence[int] = (32, 64, 128, 256)
  num_keypoints: int = 16
  upsample: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    if not 0 <= self.upsample < len(self.widths):
      raise ValueError(f'pose_upsample must be in 0..{len(self.widths) - 1} (stride-2 stages), got {self.upsample}')
    x = ConvNormAct(self.widths[0], dtype=self.dtype)(x)
    skips = []
    for width in self.widths[1:]:
      skips.append(x)
      x = ConvNormAct(width, stride=2, dtype=self.dtype)(x)
      x = ConvNormAct(width, dtype=self.dtype)(x)
    for level in range(self.upsample):
      skip = skips[-1 - level]
      x = jax.image.resize(x, (*x.shape[:1], *skip.shape[1:3], x.shape[-1]), 'nearest')
      x = ConvNormAct(skip.shape[-1], dtype=self.dtype)(jnp.concatenate([x, skip], axis=-1))
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


def part_motions(pose_keypoints: jax.Array, appearance_keypoints: jax.Array,
                 bones: Sequence[tuple[int, int]] | None) -> tuple[jax.Array, jax.Array]:
  """Affine motions z -> M z + t [N,P,2,2], [N,P,2] from the pose to the appearance image, one per part.

  Without bones the parts are the keypoints and each moves by a translation (zero order: Monkey-Net); with bones
  (pairs of keypoint indices), each bone's motion is the similarity (rotation, scale, shift) that maps its pose
  endpoints onto its appearance endpoints (first order, as the first-order motion model's local affine motions,
  but read off two keypoints rather than predicted), so a limb that turns is moved along its whole length.
  """
  if bones is None:
    matrix = jnp.broadcast_to(jnp.eye(2), (*pose_keypoints.shape[:2], 2, 2))
    return matrix, appearance_keypoints - pose_keypoints
  start, end = (jnp.array([b[i] for b in bones]) for i in (0, 1))
  p0, p1 = pose_keypoints[:, start], pose_keypoints[:, end]
  a0, a1 = appearance_keypoints[:, start], appearance_keypoints[:, end]
  dp, da = p1 - p0, a1 - a0
  # (da / dp) as complex numbers: rotation and scale. eps in the real part's numerator too: a bone that does not
  # change is moved by exactly the identity, and one that shrinks to a point by a translation, not a blow-up.
  eps = 1e-4
  norm = jnp.sum(dp**2, axis=-1) + eps
  cos = (da[..., 0] * dp[..., 0] + da[..., 1] * dp[..., 1] + eps) / norm
  sin = (da[..., 1] * dp[..., 0] - da[..., 0] * dp[..., 1]) / norm
  matrix = jnp.stack([jnp.stack([cos, -sin], -1), jnp.stack([sin, cos], -1)], -2)
  return matrix, a0 - jnp.einsum('npij,npj->npi', matrix, p0)


def bone_maps(keypoints: jax.Array, bones: Sequence[tuple[int, int]], shape: tuple[int, int],
              sigma: float) -> jax.Array:
  """Gaussian maps exp(-d^2 / (2 sigma^2)) of each bone segment's distance d on an (h, w) grid -> [N,h,w,B]."""
  start, end = (jnp.array([b[i] for b in bones]) for i in (0, 1))
  p0, p1 = keypoints[:, start], keypoints[:, end]  # [N,B,2]
  grid = coordinate_grid(*shape)[None, :, :, None, :]  # [1,h,w,1,2]
  d = (p1 - p0)[:, None, None]
  t = jnp.clip(jnp.sum((grid - p0[:, None, None]) * d, -1) / (jnp.sum(d**2, -1) + 1e-6), 0.0, 1.0)
  nearest = p0[:, None, None] + t[..., None] * d
  return jnp.exp(-jnp.sum((grid - nearest) ** 2, -1) / (2 * sigma**2))


# A part map's value at the edge of the region whose motion the mask prior gives to that part (KeypointMotion).
_BACKGROUND_LEVEL = 0.1


class KeypointMotion(nn.Module):
  """Moves the appearance image's features into the pose (DFCNet.warp; not in the design).

  Keypoint motion, as in Monkey-Net and the first-order motion model (Siarohin et al., CVPR 2019 and NeurIPS
  2019): near part p of the pose, the output reads the appearance features where that part's motion
  (part_motions) takes it. Soft masks choose the part at every location, with one more mask for no motion (the
  background). A conv stack predicts them at 1/`scale` resolution from the Gaussian maps of the pose keypoints (and
  bones) and of the keypoint motion, and from the appearance image moved by each candidate; the masks are resized to
  every feature scale. With `occlusion`, it also predicts FOMM's occlusion map, which multiplies the warped features:
  where the appearance image has nothing to move there (the background the target's body covered), the generator
  paints instead of copying. Both start from priors on the keypoints (or bones), which the conv stack corrects.
  """
  num_keypoints: int
  bones: Sequence[tuple[int, int]] | None = None
  occlusion: bool = False
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
    matrix, shift = part_motions(pose_keypoints, appearance_keypoints, self.bones)
    num_parts = matrix.shape[1]
    move = lambda grid: jnp.einsum('npij,hwj->nphwi', matrix, grid) + shift[:, :, None, None]  # noqa: E731
    grid = coordinate_grid(hs, ws)
    small = jax.image.resize(appearance, (n, hs, ws, c), 'linear')
    moved = jax.vmap(transforms.sample_at, in_axes=(None, 1), out_axes=3)(small, move(grid))  # [N,hs,ws,P,C]
    pose_maps = render_gaussians(pose_keypoints, (hs, ws), self.sigma)
    # Where each part is in the pose: its bone's segment, or its keypoint.
    part_maps = (pose_maps if self.bones is None
                 else bone_maps(pose_keypoints, self.bones, (hs, ws), self.sigma / 2))
    inputs = [pose_maps, pose_maps - render_gaussians(appearance_keypoints, (hs, ws), self.sigma), small,
              moved.reshape(n, hs, ws, num_parts * c)]
    if self.bones is not None:
      inputs.append(part_maps)
    x = jnp.concatenate(inputs, axis=-1)
    for _ in range(self.depth):
      x = ConvNormAct(self.width, normalize=False, dtype=self.dtype)(x)
    # The mask logits start from a prior the conv stack corrects: each location takes the motion of the part whose
    # map is largest there, and the background's where no part map exceeds _BACKGROUND_LEVEL. Learned from
    # nothing, the masks stayed on the background for the demo's whole run (outputs were the target, unmoved).
    prior = jnp.log(jnp.concatenate([jnp.full((n, hs, ws, 1), _BACKGROUND_LEVEL), part_maps], axis=-1) + 1e-4)
    masks = jax.nn.softmax(nn.Conv(num_parts + 1, (3, 3), dtype=self.dtype)(x).astype(jnp.float32) + prior)
    if self.occlusion:
      # Learned, starting at ~0.9 visible everywhere; times a prior: where the background's motion (the identity)
      # would read the appearance image's own body, nothing is visible. Without it the target's body stays in the
      # output where it stood.
      visible = jax.nn.sigmoid(nn.Conv(1, (3, 3), bias_init=nn.initializers.constant(2.0),
                                       dtype=self.dtype)(x).astype(jnp.float32))
      appearance_maps = (render_gaussians(appearance_keypoints, (hs, ws), self.sigma) if self.bones is None
                         else bone_maps(appearance_keypoints, self.bones, (hs, ws), self.sigma))
      visible = visible * (1.0 - masks[..., :1] * jnp.max(appearance_maps, axis=-1, keepdims=True))
    warped = []
    for f in features:
      fh, fw = f.shape[1:3]
      m = jax.image.resize(masks, (n, fh, fw, num_parts + 1), 'linear')
      grid = coordinate_grid(fh, fw)
      flow = m[..., :1] * grid + jnp.einsum('nhwp,nphwc->nhwc', m[..., 1:], move(grid))
      # Coordinates stay float32: in bfloat16 they would be off by up to a quarter pixel at 128x128.
      moved_features = transforms.sample_at(f, flow)
      if self.occlusion:
        moved_features = moved_features * jax.image.resize(visible, (n, fh, fw, 1), 'linear')
      warped.append(moved_features.astype(f.dtype))
    return warped


class KeypointRetargeter(nn.Module):
  """The pose keypoints moved onto the appearance image's body (DFCNet.retarget; not in the design).

  The source's keypoints carry the source's body: its limb lengths, its size and where it stands. The output shows
  the target's body in that pose, so an MLP of both keypoint sets adds a residual (zero at initialisation) to the
  pose keypoints, or with a `skeleton` to skeleton_prior's retargeting of them.
  """
  skeleton: Sequence[tuple[int, int]] | None = None
  rigid: Sequence[tuple[int, int]] = ()
  width: int = 256

  @nn.compact
  def __call__(self, pose_keypoints: jax.Array, appearance_keypoints: jax.Array) -> jax.Array:
    n, k, _ = pose_keypoints.shape
    start = pose_keypoints
    if self.skeleton is not None:
      # Where the feet rest, in [-1, 1] units; starts at the image's bottom edge.
      ground = self.param('ground', nn.initializers.ones, ())
      start = skeleton_prior(pose_keypoints, appearance_keypoints, self.skeleton, self.rigid, ground)
    x = jnp.concatenate([start.reshape(n, -1), appearance_keypoints.reshape(n, -1)], axis=-1)
    x = nn.gelu(nn.Dense(self.width)(x))
    x = nn.gelu(nn.Dense(self.width)(x))
    return start + nn.Dense(2 * k, kernel_init=nn.initializers.zeros)(x).reshape(n, k, 2)


def skeleton_prior(pose_keypoints: jax.Array, appearance_keypoints: jax.Array, skeleton: Sequence[tuple[int, int]],
                   rigid: Sequence[tuple[int, int]], ground: jax.Array) -> jax.Array:
  """The pose keypoints [N,K,2] redrawn with the appearance's body, as motion retargeting does: every `skeleton` edge
  (parent, child; parents first, the first parent the root) keeps the pose's direction; a `rigid` edge (a bone) takes
  the appearance's length, any other (an attachment such as shoulder width, foreshortened by the view) the pose's
  length times the ratio of the two bodies' total rigid length. The body then stands where the pose's did, both
  rescaled by that ratio: its root's horizontal offset from the image centre, its lowest keypoint's height above
  `ground` (a y in [-1, 1] units). Keypoints off the skeleton stay as they are."""
  rigid = set(map(tuple, rigid))
  if not rigid:
    raise ValueError('skeleton_prior needs rigid edges (the bones) to measure the bodies by')
  length = lambda kp, i, j: jnp.linalg.norm(kp[:, j] - kp[:, i], axis=-1, keepdims=True)  # noqa: E731
  total = lambda kp: sum(length(kp, i, j) for i, j in rigid)  # noqa: E731
  scale = total(appearance_keypoints) / jnp.maximum(total(pose_keypoints), 1e-6)  # [N, 1]
  root = skeleton[0][0]
  placed = {root: pose_keypoints[:, root]}
  for parent, child in skeleton:
    pose_length = jnp.maximum(length(pose_keypoints, parent, child), 1e-6)
    new_length = length(appearance_keypoints, parent, child) if (parent, child) in rigid else pose_length * scale
    placed[child] = placed[parent] + (pose_keypoints[:, child] - pose_keypoints[:, parent]) / pose_length * new_length
  indices = sorted(placed)
  body = jnp.stack([placed[i] for i in indices], axis=1)
  shift_x = pose_keypoints[:, root, 0] * scale[:, 0] - placed[root][:, 0]
  lift = ground - jnp.max(pose_keypoints[:, indices, 1], axis=1)
  shift_y = ground - lift * scale[:, 0] - jnp.max(body[..., 1], axis=1)
  body = body + jnp.stack([shift_x, shift_y], axis=-1)[:, None]
  return pose_keypoints.at[:, jnp.array(indices)].set(body)


class PoseCode(NamedTuple):
  logits: jax.Array     # [N,h,w,K] heatmap logits (after sharpening)
  keypoints: jax.Array  # [N,K,2] (x, y) in [-1, 1]


class DFCNet(nn.Module):
  """Pose encoder + keypoint amplifier + static encoder + generator.

  Attributes:
    num_keypoints: K soft-argmax keypoints.
    pose_widths / widths: channel widths of the pose encoder and of the static encoder and generator; one scale
      per width (1, 1/2, 1/4, 1/8 for four).
    pose_upsample: hourglass stages of the pose encoder after its coarsest scale (PoseEncoder.upsample).
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
    bones: with warp, pairs of keypoint indices that move as rigid parts (first-order motion, part_motions);
      meaningful when the keypoints are named joints (the pose encoder supervised with the renderer's joints,
      losses.LossConfig.joint_supervision). None: every keypoint moves by a translation.
    occlusion: with warp, an occlusion map on the warped features (KeypointMotion).
    retarget: with warp, the source's keypoints are moved onto the target's body before decoding
      (KeypointRetargeter).
    skeleton: with retarget and bones, (parent, child) keypoint pairs of a kinematic tree (parents first) along
      which the retargeter first redraws the source's pose with the target's bone lengths (skeleton_prior).
  """
  num_keypoints: int = 16
  pose_widths: Sequence[int] = (32, 64, 128, 256)
  pose_upsample: int = 0
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
  bones: Sequence[tuple[int, int]] | None = None
  occlusion: bool = False
  retarget: bool = False
  skeleton: Sequence[tuple[int, int]] | None = None
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
    self.pose_encoder = PoseEncoder(self.pose_widths, self.num_keypoints, self.pose_upsample, dtype=self.dtype)
    self.static_encoder = StaticEncoder(self.widths, normalize, dtype=self.dtype)
    self.generator = Generator(self.widths, self.injection, normalize, self.static_levels, dtype=self.dtype)
    if self.amplifier in ('gain', 'both'):
      self.gain = self.param('gain', nn.initializers.constant(self.gain_init), (self.num_keypoints,))
    if self.learn_sharpen and self.amplifier in ('sharpen', 'both'):
      self.log_sharpen = self.param('log_sharpen', nn.initializers.constant(math.log(self.sharpen_factor)), ())
    if (self.bones is not None or self.occlusion or self.retarget) and not self.warp:
      raise ValueError('bones, occlusion and retarget act on the keypoint warp: they need warp=True')
    for name in ('bones', 'skeleton'):
      pairs = getattr(self, name)
      if pairs is not None and any(not (0 <= i < self.num_keypoints and 0 <= j < self.num_keypoints)
                                   for i, j in pairs):
        raise ValueError(f'{name} must pair keypoint indices below num_keypoints={self.num_keypoints}, got {pairs}')
    if self.warp:
      self.motion = KeypointMotion(self.num_keypoints, bones=self.bones, occlusion=self.occlusion,
                                   dtype=self.dtype)
    if self.skeleton is not None:
      if not self.retarget or not self.bones:
        raise ValueError('skeleton acts in the retargeter and measures bodies by their bones: it needs '
                         'retarget=True and bones')
      if any(parent not in {self.skeleton[0][0]} | {c for _, c in self.skeleton[:e]}
             for e, (parent, _) in enumerate(self.skeleton)):
        raise ValueError(f'skeleton must list parents before their children, from one root; got {self.skeleton}')
    if self.retarget:
      self.retargeter = KeypointRetargeter(skeleton=self.skeleton, rigid=self.bones or ())

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

  def retarget_keypoints(self, keypoints: jax.Array, appearance_keypoints: jax.Array) -> jax.Array:
    """The pose keypoints the output is drawn in: `keypoints` moved onto the appearance's body with retarget, else
    `keypoints` themselves."""
    return self.retargeter(keypoints, appearance_keypoints) if self.retarget else keypoints

  def decode(self, keypoints: jax.Array, static: Sequence[jax.Array], appearance_keypoints: jax.Array | None = None,
             appearance: jax.Array | None = None) -> jax.Array:
    """The image with `static`'s appearance in the pose of `keypoints`. With warp, also needs the image the static
    features came from (`appearance`) and its keypoints."""
    if self.warp:
      if appearance_keypoints is None or appearance is None:
        raise ValueError('DFCNet(warp=True).decode needs the appearance image and its keypoints')
      keypoints = self.retarget_keypoints(keypoints, appearance_keypoints)
      # The appearance image itself is warped with the finest features: a direct path for its sharp pixels.
      static = self.motion(keypoints, appearance_keypoints, appearance,
                           [jnp.concatenate([static[0], appearance.astype(static[0].dtype)], axis=-1), *static[1:]])
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
  for pairs in ('bones', 'skeleton'):
    if kwargs.get(pairs) is not None:
      kwargs[pairs] = tuple(tuple(b) for b in kwargs[pairs])
  return DFCNet(**kwargs)


def discriminator_from_config(config: dict[str, Any]) -> MultiScaleDiscriminator:
  return MultiScaleDiscriminator(**config)
