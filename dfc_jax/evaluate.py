"""DFC-Net evaluation on a test split (puppets or video frames): transfers, metrics beside trivial outputs, and the
source|target|output|truth grid."""
import functools
from collections.abc import Callable

import jax
import numpy as np
from scipy import ndimage

from dfc_jax import metrics
from dfc_jax import model as model_lib
from dfc_jax import steps
from input_pipeline import grids


# Outputs that need no model, scored beside it on the same pairs: the whole-image metrics favour them (the character
# fills ~7% of a 64x64 render), so a model that does not beat them has not learned to transfer.
TRIVIAL_ROWS = ('copy_target', 'background', 'blurred_target')
BLUR_SIGMA = 1.5  # pixels, of blurred_target
PSNR_CAP = 60.0  # dB


def trivial_outputs(eval_set: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The trivial rows' outputs [N,H,W,3] of an eval set: the target copied, the truth's background alone (the
  character erased; puppets only) and the target blurred by a Gaussian of BLUR_SIGMA pixels."""
  target = eval_set['target']
  outputs = {'copy_target': target}
  if 'truth_background' in eval_set:
    outputs['background'] = eval_set['truth_background']
  outputs['blurred_target'] = ndimage.gaussian_filter(target, sigma=(0, BLUR_SIGMA, BLUR_SIGMA, 0), mode='nearest')
  return outputs


class Evaluator:
  """Jit-compiled transfer, keypoints and LPIPS for one generator architecture, reusable across checkpoints."""

  def __init__(self, generator: model_lib.DFCNet, batch_size: int = 16):
    self.batch_size = batch_size
    self._transfer = jax.jit(functools.partial(steps.transfer, generator=generator))
    self._keypoints = jax.jit(functools.partial(steps.keypoints, generator=generator))
    self._drawn_keypoints = jax.jit(functools.partial(steps.drawn_keypoints, generator=generator))
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

  def encoder_calibration(self, g_params, calibration: dict[str, np.ndarray]) -> np.ndarray:
    """Map from this model's keypoints to true joints, fitted on the calibration renders (train split), as for
    learned landmarks. (An encoder supervised with the joints needs none: metrics.named_joint_readout.)"""
    return metrics.fit_joint_regressor(self.keypoints(g_params, calibration['images']), calibration['joints'])

  def score(self, output: np.ndarray, eval_set: dict[str, np.ndarray],
            joints_of: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, float]:
    """Mean SSIM, PSNR and LPIPS of outputs against the eval set's truths; with puppets' true silhouettes also
    silhouette IoU ('iou') and foreground L1 ('fg_l1'); with a fixed joint regressor `joints_of` (images ->
    joints in pixels) and true joints, 'keypoint_error' in pixels."""
    truth = eval_set['truth']
    values = {
        'ssim': self._batched(self._ssim, output, truth),
        # An output identical to its truth (a trivial row whose pair drew the same pose twice) counts PSNR_CAP dB,
        # not infinity, so that one such pair does not make the mean infinite.
        'psnr': np.minimum(self._batched(self._psnr, output, truth), PSNR_CAP),
        'lpips': self._batched(functools.partial(self._lpips, self._lpips_params), output, truth),
    }
    if 'truth_silhouette' in eval_set:
      values['iou'] = metrics.silhouette_iou_of(output, eval_set['truth'], eval_set['truth_silhouette'],
                                                eval_set['truth_background'])
      values['fg_l1'] = metrics.foreground_l1(output, truth,
                                              eval_set['truth_silhouette'] | eval_set['target_silhouette'])
    if joints_of is not None and 'truth_joints' in eval_set:
      values['keypoint_error'] = metrics.keypoint_error(joints_of(output), eval_set['truth_joints'])
    return {k: float(np.mean(v)) for k, v in values.items()}

  def evaluate(self, g_params, eval_set: dict[str, np.ndarray],
               joints_of: Callable[[np.ndarray], np.ndarray] | None = None,
               encoder_map: np.ndarray | None = None) -> tuple[dict[str, dict[str, float]], np.ndarray]:
    """Scores ({row: {metric: mean}}) of the model and of every trivial row on the same pairs; and the outputs.

    The model's row adds 'keypoint_spread' (its source keypoints' standard deviation over the pairs, [-1, 1]
    units; true joints spread ~0.11), with `joints_of` 'truth_keypoint_error': the judge's own error on the truths,
    what a perfect output would read, and, with `encoder_map` (encoder_calibration, or metrics.named_joint_readout
    for an encoder supervised with the joints), 'encoder_keypoint_error': its own pose encoder's error on the
    sources in pixels (what the encoder sees, not what the generator draws), and 'drawn_keypoint_error': the error
    of the keypoints the output is drawn in (retargeted onto the target's body when the model retargets) against
    the truth's joints, the pose the generator is asked to draw.
    """
    output = self.transfer(g_params, eval_set['source'], eval_set['target'])
    rows = {'model': self.score(output, eval_set, joints_of)}
    source_keypoints = self.keypoints(g_params, eval_set['source'])
    rows['model']['keypoint_spread'] = float(np.mean(np.std(source_keypoints, axis=0)))
    if joints_of is not None and 'truth_joints' in eval_set:
      rows['model']['truth_keypoint_error'] = float(np.mean(metrics.keypoint_error(
          joints_of(eval_set['truth']), eval_set['truth_joints'])))
    if encoder_map is not None and 'source_joints' in eval_set:
      rows['model']['encoder_keypoint_error'] = float(np.mean(metrics.keypoint_error(
          metrics.regress_joints(encoder_map, source_keypoints), eval_set['source_joints'])))
      drawn = self._batched(functools.partial(self._drawn_keypoints, g_params), eval_set['source'],
                            eval_set['target'])
      rows['model']['drawn_keypoint_error'] = float(np.mean(metrics.keypoint_error(
          metrics.regress_joints(encoder_map, drawn), eval_set['truth_joints'])))
    for name, trivial in trivial_outputs(eval_set).items():
      rows[name] = self.score(trivial, eval_set, joints_of)
    return rows, output


def image_grid(columns: list[np.ndarray], rows: int) -> np.ndarray:
  """uint8 grid: one row per sample, one column per [N,H,W,3] [0, 1] image stack (e.g. source|target|output|truth)."""
  rows = min(rows, len(columns[0]))
  # Panels abut (no gap): the puppet renders share one background colour per row, which separates them already.
  return grids.make_grid([[c[i] for c in columns] for i in range(rows)], gap=0)

