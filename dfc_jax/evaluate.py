"""DFC-Net evaluation on a test split (puppets or video frames): transfers, metrics and the
source|target|output|truth grid."""
import functools

import jax
import numpy as np

from dfc_jax import metrics
from dfc_jax import model as model_lib
from dfc_jax import train
from input_pipeline import grids


class Evaluator:
  """Jit-compiled transfer, keypoints and LPIPS for one generator architecture, reusable across checkpoints."""

  def __init__(self, generator: model_lib.DFCNet, batch_size: int = 16):
    self.batch_size = batch_size
    self._transfer = jax.jit(functools.partial(train.transfer, generator=generator))
    self._keypoints = jax.jit(functools.partial(train.keypoints, generator=generator))
    self._lpips_params = metrics.lpips_alex_params()
    self._lpips = jax.jit(metrics.lpips)
    self._ssim = jax.jit(metrics.ssim)
    self._psnr = jax.jit(metrics.psnr)

  def _batched(self, fn, *arrays) -> np.ndarray:
    out = [np.asarray(fn(*(a[i:i + self.batch_size] for a in arrays)))
           for i in range(0, len(arrays[0]), self.batch_size)]
    return np.concatenate(out)

  def transfer(self, g_params, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """[0, 1] outputs [N,H,W,3] of the target in the source's pose."""
    return self._batched(functools.partial(self._transfer, g_params), source, target)

  def keypoints(self, g_params, images: np.ndarray) -> np.ndarray:
    return self._batched(functools.partial(self._keypoints, g_params), images)

  def joint_regressor(self, g_params, calibration: dict[str, np.ndarray]) -> np.ndarray:
    """Linear map from this model's keypoints to true joints, fitted on calibration renders (train split)."""
    return metrics.fit_joint_regressor(self.keypoints(g_params, calibration['images']), calibration['joints'])

  def evaluate(self, g_params, eval_set: dict[str, np.ndarray],
               regressor: np.ndarray | None = None) -> tuple[dict[str, float], np.ndarray]:
    """Mean SSIM, PSNR and LPIPS on a paired eval set; and the outputs.

    Puppet eval sets also give silhouette IoU (they carry the true silhouette and background) and, with a joint
    regressor, keypoint error in pixels (they carry the true joints).
    """
    output = self.transfer(g_params, eval_set['source'], eval_set['target'])
    truth = eval_set['truth']
    values = {
        'ssim': self._batched(self._ssim, output, truth),
        'psnr': self._batched(self._psnr, output, truth),
        'lpips': self._batched(functools.partial(self._lpips, self._lpips_params), output, truth),
    }
    if 'truth_silhouette' in eval_set:
      silhouette = metrics.predicted_silhouette(output, eval_set['truth_background'])
      values['silhouette_iou'] = metrics.silhouette_iou(silhouette, eval_set['truth_silhouette'])
    if regressor is not None and 'truth_joints' in eval_set:
      joints = metrics.regress_joints(regressor, self.keypoints(g_params, output))
      values['keypoint_error'] = metrics.keypoint_error(joints, eval_set['truth_joints'])
    return {k: float(np.mean(v)) for k, v in values.items()}, output


def image_grid(columns: list[np.ndarray], rows: int) -> np.ndarray:
  """uint8 grid: one row per sample, one column per [N,H,W,3] [0, 1] image stack (e.g. source|target|output|truth)."""
  rows = min(rows, len(columns[0]))
  # Panels abut (no gap): the puppet renders share one background colour per row, which separates them already.
  return grids.make_grid([[c[i] for c in columns] for i in range(rows)], gap=0)

