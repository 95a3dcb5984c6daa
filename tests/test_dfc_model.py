"""DFC-Net's networks (dfc_jax/model.py) on small hand-made cases: keypoints, rendering, the amplifier, the
keypoint warp, normalisation and static skips."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfc_jax import model as model_lib
from dfc_jax import transforms

# 'rbg' keys: XLA compiles threefry's unrolled rounds slowly on a CPU, and these tests initialise many networks.
_KEY = jax.random.key(0, impl='rbg')
_RNG = np.random.default_rng(0)


def test_pixel_centres():
  np.testing.assert_allclose(model_lib.pixel_centres(4), [-0.75, -0.25, 0.25, 0.75])


def test_soft_argmax_of_a_peak_and_of_two_equal_peaks():
  logits = np.full((1, 4, 8, 2), -1e4, np.float32)
  logits[0, 1, 6, 0] = 0.0                       # one peak at row 1, column 6
  logits[0, 0, 0, 1] = logits[0, 3, 2, 1] = 0.0  # two equal peaks: the keypoint is their midpoint
  keypoints = np.asarray(model_lib.soft_argmax(jnp.asarray(logits)))
  # Column 6 of 8 has centre (2 * 6 + 1) / 8 - 1 = 0.625; row 1 of 4 has (2 + 1) / 4 - 1 = -0.25.
  np.testing.assert_allclose(keypoints[0, 0], [0.625, -0.25], atol=1e-6)
  np.testing.assert_allclose(keypoints[0, 1], [0.5 * (-0.875 + -0.375), 0.5 * (-0.75 + 0.75)], atol=1e-6)
  # Uniform logits: the centre of the image.
  np.testing.assert_allclose(model_lib.soft_argmax(jnp.zeros((1, 5, 3, 1)))[0, 0], [0.0, 0.0], atol=1e-6)


def test_gaussian_rendering():
  keypoints = jnp.array([[[0.25, -0.25]]])  # the centre of pixel (row 1, column 2) of a 4x4 grid
  maps = np.asarray(model_lib.render_gaussians(keypoints, (4, 4), sigma=0.5))
  assert maps.shape == (1, 4, 4, 1)
  assert maps[0, 1, 2, 0] == pytest.approx(1.0)
  assert maps[0, 1, 2, 0] == maps.max()
  # One pixel (0.5 in [-1, 1] units = sigma) away: exp(-1/2); diagonal: exp(-1).
  assert maps[0, 1, 3, 0] == pytest.approx(np.exp(-0.5), rel=1e-6)
  assert maps[0, 2, 3, 0] == pytest.approx(np.exp(-1.0), rel=1e-6)


def test_warped_images_move_their_keypoints_as_the_transform_moves_points():
  keypoints = jnp.array([[[0.3, -0.2]], [[-0.4, 0.1]], [[0.0, 0.5]], [[0.2, 0.2]]])
  # Not square, so that rows and columns have different pixel sizes in [-1, 1] units.
  images = model_lib.render_gaussians(keypoints, (40, 48), sigma=0.06)
  transform = transforms.random_similarity(_KEY, 4, max_rotation=30.0, max_log_scale=0.2, max_shift=0.2)
  angles = np.degrees(np.arctan2(transform.matrix[:, 1, 0], transform.matrix[:, 0, 0]))
  scales = np.sqrt(np.linalg.det(np.asarray(transform.matrix)))
  assert np.all(np.abs(angles) <= 30.0) and np.all(np.abs(np.log(scales)) <= 0.2 + 1e-6)
  assert np.all(np.abs(transform.shift) <= 0.2) and len(np.unique(np.asarray(transform.shift[:, 0]))) == 4
  # soft_argmax of log intensities is the intensity-weighted centroid: the blob's centre, wherever it moved.
  centroid = lambda maps: model_lib.soft_argmax(jnp.log(maps + 1e-30))  # noqa: E731
  np.testing.assert_allclose(centroid(images), keypoints, atol=1e-5)
  moved = transforms.transform_points(keypoints, transform)
  assert np.abs(moved - keypoints).max() > 0.1
  # Within a tenth of a pixel (pixels are 0.04-0.05 wide here); bilinear resampling blurs but does not shift.
  np.testing.assert_allclose(centroid(transforms.warp_images(images, transform)), moved, atol=5e-3)
  identity = transforms.random_similarity(_KEY, 4, max_rotation=0.0, max_log_scale=0.0, max_shift=0.0)
  np.testing.assert_allclose(transforms.warp_images(images, identity), images, atol=1e-6)


def _tiny(amplifier: str, **kwargs) -> model_lib.DFCNet:
  return model_lib.DFCNet(num_keypoints=3, pose_widths=(4, 4), widths=(4, 4), amplifier=amplifier, **kwargs)


def test_amplifier_readings():
  image = jnp.asarray(_RNG.uniform(-1, 1, (1, 8, 8, 3)), jnp.float32)
  params = {a: _tiny(a).init(_KEY, image, image)['params'] for a in model_lib.AMPLIFIERS}
  np.testing.assert_allclose(params['gain']['gain'], [10.0] * 3)
  assert 'gain' not in params['off'] and 'gain' not in params['sharpen']
  shared = {k: v for k, v in params['gain'].items() if k != 'gain'}
  logits_off = _tiny('off').apply({'params': shared}, image, method=model_lib.DFCNet.encode_pose).logits
  logits_sharp = _tiny('sharpen', sharpen_factor=3.0).apply({'params': shared}, image,
                                                            method=model_lib.DFCNet.encode_pose).logits
  np.testing.assert_allclose(logits_sharp, 3.0 * logits_off, rtol=1e-5)
  keypoints = jnp.zeros((1, 3, 2))
  maps_off = _tiny('off').apply({'params': shared}, keypoints, (8, 8), method=model_lib.DFCNet.pose_maps)
  maps_gain = _tiny('gain').apply({'params': params['gain']}, keypoints, (8, 8), method=model_lib.DFCNet.pose_maps)
  assert [m.shape for m in maps_gain] == [(1, 8, 8, 3), (1, 4, 4, 3)]
  for off, gain in zip(maps_off, maps_gain):
    np.testing.assert_allclose(gain, 10.0 * off, rtol=1e-6)
  with pytest.raises(ValueError, match='amplifier'):
    _tiny('loud').init(_KEY, image, image)
  # A learned sharpening factor starts at sharpen_factor and is a parameter the heatmaps can raise.
  learned = _tiny('sharpen', sharpen_factor=3.0, learn_sharpen=True)
  learned_params = learned.init(_KEY, image, image)['params']
  np.testing.assert_allclose(np.exp(learned_params['log_sharpen']), 3.0, rtol=1e-6)
  sharper = {**shared, 'log_sharpen': jnp.log(6.0)}
  logits_learned = learned.apply({'params': sharper}, image, method=model_lib.DFCNet.encode_pose).logits
  np.testing.assert_allclose(logits_learned, 6.0 * logits_off, rtol=1e-5)


def test_generator_and_discriminator_shapes():
  image = jnp.zeros((2, 16, 16, 3))
  for injection in model_lib.INJECTIONS:
    net = model_lib.DFCNet(num_keypoints=2, pose_widths=(4, 4, 4), widths=(4, 4, 4), injection=injection)
    output, _ = net.init_with_output(_KEY, image, image)
    assert output.shape == (2, 16, 16, 3)
  disc = model_lib.MultiScaleDiscriminator(num_scales=2, width=4, num_layers=2)
  outputs, _ = disc.init_with_output(_KEY, image, image)
  assert len(outputs) == 2 and outputs[0][-1].shape[-1] == 1 and outputs[1][-1].shape[1] < outputs[0][-1].shape[1]
  # Pose-conditioned: the same image and target with other pose maps get another verdict.
  posed = model_lib.MultiScaleDiscriminator(num_scales=2, width=4, num_layers=2, pose_condition=True)
  one_pose = model_lib.render_gaussians(jnp.zeros((2, 2, 2)), (16, 16), 0.1)
  other_pose = model_lib.render_gaussians(jnp.full((2, 2, 2), 0.6), (16, 16), 0.1)
  noise = jnp.asarray(_RNG.uniform(-1, 1, image.shape), jnp.float32)
  d_params = posed.init(_KEY, noise, noise, one_pose)
  logits = [posed.apply(d_params, noise, noise, p)[0][-1] for p in (one_pose, other_pose)]
  assert float(jnp.abs(logits[0] - logits[1]).max()) > 1e-4
  with pytest.raises(ValueError, match='pose maps'):
    posed.apply(d_params, noise, noise)


def test_keypoint_motion_reads_the_appearance_where_its_keypoints_moved():
  motion = model_lib.KeypointMotion(num_keypoints=3, width=8, depth=1)
  appearance = jnp.asarray(_RNG.uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
  features = [jnp.asarray(_RNG.normal(size=(2, 16, 16, 4)), jnp.float32),
              jnp.asarray(_RNG.normal(size=(2, 8, 8, 5)), jnp.float32)]
  pose = jnp.asarray(_RNG.uniform(-0.5, 0.5, (2, 3, 2)), jnp.float32)
  params = motion.init(_KEY, pose, pose, appearance, features)['params']
  # Keypoints that did not move: the features come back unchanged, whatever the masks.
  for still, f in zip(motion.apply({'params': params}, pose, pose, appearance, features), features):
    np.testing.assert_allclose(still, f, atol=1e-5)
  # Masks forced off the background (mask 0) and every appearance keypoint 0.25 (2 pixels of 16, 1 of 8) to the
  # right of its pose keypoint: the output at z reads the appearance features at z + 0.25, edges extended.
  params['Conv_0'] = {'kernel': jnp.zeros_like(params['Conv_0']['kernel']), 'bias': jnp.array([-30.0, 0, 0, 0])}
  moved = motion.apply({'params': params}, pose, pose + jnp.array([0.25, 0.0]), appearance, features)
  for (out, f), pixels in zip(zip(moved, features), (2, 1)):
    np.testing.assert_allclose(out[:, :, :-pixels], f[:, :, pixels:], atol=1e-5)
    np.testing.assert_allclose(out[:, :, -1], f[:, :, -1], atol=1e-5)
  net = model_lib.DFCNet(num_keypoints=3, pose_widths=(4, 4, 4), widths=(4, 4, 4), warp=True)
  output, variables = net.init_with_output(_KEY, appearance, appearance)
  assert output.shape == (2, 16, 16, 3) and 'motion' in variables['params']
  code = net.apply(variables, appearance, method=model_lib.DFCNet.encode_pose)
  static = net.apply(variables, appearance, method=model_lib.DFCNet.encode_static)
  with pytest.raises(ValueError, match='needs the appearance image and its keypoints'):
    net.apply(variables, code.keypoints, static, method=model_lib.DFCNet.decode)


def test_bone_motion_maps_each_bone_onto_its_appearance_bone():
  # Bones of 0.3 to 1.1 (the 1e-4 regulariser is then below 0.2% of their squared lengths).
  pose = jnp.asarray([[[-0.5, -0.4], [0.3, 0.1], [0.1, 0.6]], [[0.2, 0.2], [-0.3, -0.5], [0.6, -0.3]]], jnp.float32)
  appearance = jnp.asarray([[[0.4, -0.3], [-0.2, 0.5], [0.5, 0.4]], [[0.1, -0.6], [0.0, 0.3], [-0.5, 0.2]]],
                           jnp.float32)
  # Zero order: each keypoint's neighbourhood moves by its own displacement.
  matrix, shift = model_lib.part_motions(pose, appearance, None)
  np.testing.assert_allclose(matrix, np.broadcast_to(np.eye(2), (2, 3, 2, 2)))
  np.testing.assert_allclose(shift, appearance - pose, atol=1e-6)
  # First order: the similarity of bone (i, j) takes both pose endpoints onto the appearance endpoints (up to the
  # 1e-4 regulariser of short bones) and is a rotation times a scale; a bone that does not change is not moved.
  bones = ((0, 1), (1, 2), (2, 0))
  matrix, shift = model_lib.part_motions(pose, appearance, bones)
  for b, (i, j) in enumerate(bones):
    for k in (i, j):
      moved = np.einsum('nij,nj->ni', matrix[:, b], pose[:, k]) + shift[:, b]
      np.testing.assert_allclose(moved, appearance[:, k], atol=2e-3)
  still, _ = model_lib.part_motions(pose, pose + 0.3, bones)
  np.testing.assert_allclose(still, np.broadcast_to(np.eye(2), still.shape), atol=1e-6)
  np.testing.assert_allclose(matrix[..., 0, 0], matrix[..., 1, 1])
  np.testing.assert_allclose(matrix[..., 0, 1], -matrix[..., 1, 0])
  # Bone maps are 1 on the segment and fall off across it.
  line = jnp.asarray([[[-0.5, 0.0625], [0.5, 0.0625]]], jnp.float32)  # along row 8 of 16 (centre 0.0625)
  maps = np.asarray(model_lib.bone_maps(line, ((0, 1),), (16, 16), 0.1))[0, ..., 0]
  np.testing.assert_allclose(maps[8, 4:12], 1.0, atol=1e-5)
  assert maps[4, 8] < 0.1 and maps[8, 0] < maps[8, 2] < 1.0


def test_bone_motion_moves_features_and_the_occlusion_map_scales_them():
  bones = ((0, 1), (1, 2))
  # Masks at full resolution (scale 1), so that the occlusion prior can be read pixel by pixel.
  motion = model_lib.KeypointMotion(num_keypoints=3, bones=bones, occlusion=True, width=8, depth=1, scale=1)
  appearance = jnp.asarray(_RNG.uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
  features = [jnp.asarray(_RNG.normal(size=(2, 16, 16, 4)), jnp.float32)]
  pose = jnp.asarray(_RNG.uniform(-0.5, 0.5, (2, 3, 2)), jnp.float32)
  params = motion.init(_KEY, pose, pose, appearance, features)['params']
  # Masks forced onto bone 0 and everything visible: a whole-body shift of 0.25 moves the features by 2 pixels.
  params['Conv_0'] = {'kernel': jnp.zeros_like(params['Conv_0']['kernel']), 'bias': jnp.array([-30.0, 30.0, -30.0])}
  params['Conv_1'] = {'kernel': jnp.zeros_like(params['Conv_1']['kernel']), 'bias': jnp.array([30.0])}
  (moved,) = motion.apply({'params': params}, pose, pose + jnp.array([0.25, 0.0]), appearance, features)
  np.testing.assert_allclose(moved[:, :, :-2], features[0][:, :, 2:], atol=1e-4)
  # Masks forced onto the background (no motion): the features come back unmoved except where the appearance's own
  # body is (its bones' maps), which the occlusion prior hides, so that the body does not stay where it stood.
  params['Conv_0'] = {'kernel': params['Conv_0']['kernel'], 'bias': jnp.array([30.0, -30.0, -30.0])}
  body = jnp.asarray([[[-0.5, 0.0625], [0.5, 0.0625], [0.5, 0.0625]]] * 2, jnp.float32)  # along row 8 of 16
  (kept,) = motion.apply({'params': params}, pose, body, appearance, features)
  np.testing.assert_allclose(kept[:, 0], features[0][:, 0], atol=1e-4)  # far from the body
  np.testing.assert_allclose(kept[:, 8, 6:10], 0.0, atol=1e-2)
  # Nothing visible: the generator gets no features to copy.
  params['Conv_1'] = {'kernel': params['Conv_1']['kernel'], 'bias': jnp.array([-30.0])}
  (hidden,) = motion.apply({'params': params}, pose, pose, appearance, features)
  np.testing.assert_allclose(hidden, 0.0, atol=1e-9)


def _retargeting_case(**model_kwargs):
  """A 3-keypoint retargeting DFCNet, its variables, an image and random pose and appearance keypoints."""
  net = model_lib.DFCNet(num_keypoints=3, pose_widths=(4, 4, 4), widths=(4, 4, 4), warp=True, retarget=True,
                         bones=((0, 1), (1, 2)), **model_kwargs)
  image = jnp.asarray(_RNG.uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
  pose, appearance = (jnp.asarray(_RNG.uniform(-0.5, 0.5, (2, 3, 2)), jnp.float32) for _ in range(2))
  return net, net.init(_KEY, image, image), image, pose, appearance


def test_retargeting_starts_as_the_identity_and_needs_the_warp():
  net, variables, image, pose, appearance = _retargeting_case(occlusion=True)
  drawn = net.apply(variables, pose, appearance, method=model_lib.DFCNet.retarget_keypoints)
  np.testing.assert_allclose(drawn, pose, atol=1e-7)
  # Once trained, it moves them.
  variables['params']['retargeter']['Dense_2']['kernel'] += 0.1
  moved = net.apply(variables, pose, appearance, method=model_lib.DFCNet.retarget_keypoints)
  assert np.abs(np.asarray(moved) - np.asarray(pose)).min() > 0
  for switch in ('retarget', 'occlusion'):
    with pytest.raises(ValueError, match='need warp=True'):
      model_lib.DFCNet(num_keypoints=3, **{switch: True}).init(_KEY, image, image)
  with pytest.raises(ValueError, match='below num_keypoints=3'):
    model_lib.DFCNet(num_keypoints=3, warp=True, bones=((0, 3),)).init(_KEY, image, image)


def test_the_skeleton_prior_redraws_the_pose_with_the_appearances_bones_where_the_pose_stood():
  # A chain 0 -> 1 -> 2 of two bones (lengths 0.2 + 0.2 posed, 0.4 + 0.2 in the appearance: scale 1.5), an
  # attachment 0 -> 3 (not rigid: its length scales) and keypoint 4 off the skeleton. y grows downwards.
  pose = jnp.array([[[0.2, 0.0], [0.2, -0.2], [0.2, -0.4], [0.3, 0.0], [0.9, 0.9]]])
  appearance = jnp.array([[[0.3, 0.1], [0.3, -0.3], [0.5, -0.3], [0.4, 0.1], [-0.9, -0.9]]])
  skeleton, rigid = ((0, 1), (1, 2), (0, 3)), ((0, 1), (1, 2))
  drawn = model_lib.skeleton_prior(pose, appearance, skeleton, rigid, jnp.float32(0.5))
  # Root x 0.2 -> 0.3 (its offset from the centre x 1.5); the lowest keypoint 0.5 above the ground -> 0.75.
  np.testing.assert_allclose(drawn[0], [[0.3, -0.25], [0.3, -0.65], [0.3, -0.85], [0.45, -0.25], [0.9, 0.9]],
                             atol=1e-6)
  # The same body in its own pose is left where it is, whatever the ground.
  np.testing.assert_allclose(model_lib.skeleton_prior(pose, pose, skeleton, rigid, jnp.float32(0.9)), pose, atol=1e-6)
  with pytest.raises(ValueError, match='needs rigid edges'):
    model_lib.skeleton_prior(pose, appearance, skeleton, (), jnp.float32(0.5))


def test_a_skeleton_retargeter_starts_at_the_skeleton_prior_and_needs_bones_in_tree_order():
  skeleton = ((0, 1), (1, 2))
  net, variables, image, pose, appearance = _retargeting_case(skeleton=skeleton)
  drawn = net.apply(variables, pose, appearance, method=model_lib.DFCNet.retarget_keypoints)
  # The ground starts at the image's bottom edge.
  np.testing.assert_allclose(drawn, model_lib.skeleton_prior(pose, appearance, skeleton, skeleton, jnp.float32(1.0)),
                             atol=1e-6)
  assert np.abs(np.asarray(drawn) - np.asarray(pose)).max() > 1e-3
  with pytest.raises(ValueError, match='needs retarget=True and bones'):
    model_lib.DFCNet(num_keypoints=3, warp=True, retarget=True, skeleton=skeleton).init(_KEY, image, image)
  with pytest.raises(ValueError, match='parents before their children'):
    model_lib.DFCNet(num_keypoints=3, warp=True, retarget=True, bones=skeleton,
                     skeleton=((1, 2), (0, 1))).init(_KEY, image, image)


def test_instance_norm_erases_intensity_and_norm_none_keeps_it():
  # A target and a dimmer copy of it (x / 2): bias-free convs and instance norm make the static features, hence the
  # output, blind to such a change of the target's colours (what made the demo output washed-out blobs); with
  # norm='none' they differ.
  bright = jnp.asarray(_RNG.uniform(-1, 1, (1, 8, 8, 3)), jnp.float32)
  dim = 0.5 * bright
  for norm, differ in (('instance', False), ('none', True)):
    net = _tiny('gain', norm=norm)
    params = net.init(_KEY, bright, bright)
    feats = [net.apply(params, x, method=model_lib.DFCNet.encode_static) for x in (bright, dim)]
    outputs = [net.apply(params, bright, x) for x in (bright, dim)]
    gap = max(float(jnp.abs(a - b).max()) for a, b in zip(*feats))
    assert (gap > 1e-3) == differ, norm
    assert (float(jnp.abs(outputs[0] - outputs[1]).max()) > 1e-3) == differ, norm
  with pytest.raises(ValueError, match='norm'):
    _tiny('gain', norm='batch').init(_KEY, bright, bright)


def test_static_levels_drop_the_fine_static_skips():
  image = jnp.asarray(_RNG.uniform(-1, 1, (1, 16, 16, 3)), jnp.float32)
  keypoints = jnp.zeros((1, 2, 2))

  def fine_skip_gradient(static_levels):
    net = model_lib.DFCNet(num_keypoints=2, pose_widths=(4, 4, 4), widths=(4, 4, 4), static_levels=static_levels)
    params = net.init(_KEY, image, image)
    static = net.apply(params, image, method=model_lib.DFCNet.encode_static)
    grads = jax.grad(lambda s: net.apply(params, keypoints, s, method=model_lib.DFCNet.decode).sum())(static)
    return [float(jnp.abs(g).sum()) for g in grads]

  # Three scales: all skips by default; static_levels=2 drops the full-resolution one; 1 keeps only the deepest.
  assert all(g > 0 for g in fine_skip_gradient(None))
  two, one = fine_skip_gradient(2), fine_skip_gradient(1)
  assert two[0] == 0 and two[1] > 0 and two[2] > 0
  assert one[0] == 0 and one[1] == 0 and one[2] > 0
  with pytest.raises(ValueError, match='static_levels'):
    model_lib.DFCNet(num_keypoints=2, pose_widths=(4, 4), widths=(4, 4), static_levels=3).init(_KEY, image, image)



def test_pose_encoder_hourglass_keeps_the_heatmap_size_with_a_coarser_stage():
  image = jnp.zeros((2, 64, 64, 3))
  flat = model_lib.PoseEncoder((4, 4, 6), num_keypoints=3)
  hourglass = model_lib.PoseEncoder((4, 4, 6, 8), num_keypoints=3, upsample=1)
  for encoder in (flat, hourglass):
    assert encoder.apply(encoder.init(_KEY, image), image).shape == (2, 16, 16, 3)
  # The 8x8 stage's 8 channels, upsampled, meet the 16x16 stage's 6 in one conv back to 6.
  kernels = [leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(hourglass.init(_KEY, image))
             if 'kernel' in jax.tree_util.keystr(path)]
  assert (3, 3, 8 + 6, 6) in kernels and (1, 1, 6, 3) in kernels
  with pytest.raises(ValueError, match='pose_upsample must be in 0..3'):
    model_lib.PoseEncoder((4, 4, 4, 4), num_keypoints=3, upsample=4).init(_KEY, image)
