"""DFC-Net's metrics (dfc_jax/metrics.py): PSNR, SSIM, LPIPS, silhouette IoU and the joint regressor's keypoint
error."""
import jax.numpy as jnp
import numpy as np

from dfc_jax import metrics

_RNG = np.random.default_rng(0)


def test_psnr_ssim_lpips():
  truth = jnp.asarray(_RNG.uniform(0, 1, (2, 32, 32, 3)), jnp.float32)
  noise = jnp.asarray(_RNG.normal(size=truth.shape), jnp.float32)
  noisy = jnp.clip(truth + 0.1 * noise, 0, 1)
  mse = np.mean((np.asarray(noisy) - np.asarray(truth)) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(metrics.psnr(noisy, truth), 10 * np.log10(1.0 / mse), rtol=1e-4)
  np.testing.assert_allclose(metrics.ssim(truth, truth), [1.0, 1.0], atol=1e-5)
  assert (np.asarray(metrics.ssim(noisy, truth)) < 0.99).all()
  params = metrics.lpips_alex_params()
  np.testing.assert_allclose(metrics.lpips(params, truth, truth), [0.0, 0.0], atol=1e-6)
  noisier = jnp.clip(truth + 0.3 * noise, 0, 1)
  slightly = np.asarray(metrics.lpips(params, noisy, truth))
  strongly = np.asarray(metrics.lpips(params, noisier, truth))
  assert (slightly > 1e-3).all() and (strongly > slightly).all()


def test_silhouette_iou():
  background = np.zeros((1, 4, 4, 3), np.float32)
  output = background.copy()
  output[0, :2, :2] = 0.5                         # 4 foreground pixels
  true = np.zeros((1, 4, 4), bool)
  true[0, :2, :3] = True                          # 6 true pixels, 4 shared
  predicted = metrics.predicted_silhouette(output, background)
  assert predicted.sum() == 4
  np.testing.assert_allclose(metrics.silhouette_iou(predicted, true), [4 / 6])
  np.testing.assert_allclose(metrics.silhouette_iou(np.zeros_like(true), np.zeros_like(true)), [1.0])
  np.testing.assert_allclose(metrics.foreground_l1(output, background, true), [0.5 * 4 / 6])


def test_silhouette_iou_of_the_truth_is_one_with_the_true_mask():
  # A truth whose character has one pixel of the background's colour and one anti-aliased pixel outside its mask.
  background = np.zeros((1, 4, 4, 3), np.float32)
  truth = background.copy()
  truth[0, :2, :2] = 0.8
  truth[0, 0, 0] = 0.0   # inside the mask, indistinguishable from the background
  truth[0, 3, 3] = 0.3   # outside the mask, differs from the background
  mask = np.zeros((1, 4, 4), bool)
  mask[0, :2, :2] = True
  np.testing.assert_allclose(metrics.silhouette_iou_of(truth, truth, mask, background), [1.0])
  # The background alone scores 0, a copy with one true pixel missing 2 / 3 of the 3 readable ones.
  np.testing.assert_allclose(metrics.silhouette_iou_of(background, truth, mask, background), [0.0])
  partial = truth.copy()
  partial[0, 1, 1] = 0.0
  np.testing.assert_allclose(metrics.silhouette_iou_of(partial, truth, mask, background), [2 / 3])


def test_joint_regressor_recovers_a_linear_map_and_keypoint_error():
  rng = np.random.default_rng(0)
  keypoints = rng.uniform(-1, 1, (50, 3, 2))
  weights = rng.normal(size=(7, 4))
  joints = (np.concatenate([keypoints.reshape(50, 6), np.ones((50, 1))], 1) @ weights).reshape(50, 2, 2)
  fitted = metrics.fit_joint_regressor(keypoints, joints, ridge=0.0)
  np.testing.assert_allclose(metrics.regress_joints(fitted, keypoints), joints, atol=1e-8)
  predicted = np.zeros((1, 2, 2))
  true = np.array([[[3.0, 4.0], [0.0, 1.0]]])
  np.testing.assert_allclose(metrics.keypoint_error(predicted, true), [3.0])  # (5 + 1) / 2


def test_named_joint_readout_reads_the_first_keypoints_as_pixel_joints():
  # Keypoints in [-1, 1] units whose first two are joints of a 40-high, 60-wide image; the third is a free landmark.
  joints = np.array([[[0.0, 0.0], [60.0, 40.0]], [[15.0, 30.0], [45.0, 10.0]]])
  named = joints / np.array([60.0, 40.0]) * 2.0 - 1.0
  keypoints = np.concatenate([named, np.full((2, 1, 2), 0.3)], axis=1)
  readout = metrics.named_joint_readout(num_keypoints=3, num_joints=2, image_size=(40, 60))
  np.testing.assert_allclose(metrics.regress_joints(readout, keypoints), joints, atol=1e-12)
  # Moving the free landmark moves no joint.
  keypoints[:, 2] = -0.7
  np.testing.assert_allclose(metrics.regress_joints(readout, keypoints), joints, atol=1e-12)
