"""DFC-Net's G + D step (dfc_jax/steps.py): sharded = single device, gradients through the re-encoding, the
equivariance prior and the adversarial warm-up."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import ndimage

from dfc_jax import losses
from dfc_jax import metrics
from dfc_jax import model as model_lib
from dfc_jax import steps as dfc_steps
from dfc_jax import transforms

_GENERATOR = model_lib.DFCNet(num_keypoints=2, pose_widths=(4, 4), widths=(4, 4))
_DISCRIMINATOR = model_lib.MultiScaleDiscriminator(num_scales=2, width=4, num_layers=2)
# 'rbg' keys: XLA compiles threefry's unrolled rounds slowly on a CPU.
_KEY = jax.random.key(0, impl='rbg')


def _batch(n: int, size: int = 16, num_joints: int = 2) -> dict[str, np.ndarray]:
  keys = ('source', 'target', 'truth', 'support_source', 'support_target')
  rng = np.random.default_rng(0)
  batch = {k: rng.uniform(0, 1, (n, size, size, 3)).astype(np.float32) for k in keys}
  batch.update({k: rng.uniform(0, size, (n, num_joints, 2)).astype(np.float32)
                for k in ('source_joints', 'target_joints', 'truth_joints')})
  return batch


def test_step_on_eight_devices_equals_one_device():
  assert jax.device_count() == 8
  # Plain SGD: Adam's first step is lr * sign(gradient), which turns float noise in ~zero gradients into lr-sized
  # differences.
  tx = optax.sgd(0.1)
  # With the demo's switches (keypoint warp with bone motion, occlusion and retargeting, learned sharpening,
  # pose-conditioned discriminator, equivariance and separation priors, joint supervision, normalised perceptual
  # pyramid), so that they are checked under sharding too (the smoke run below trains without them).
  generator = model_lib.DFCNet(num_keypoints=2, pose_widths=(4, 4), widths=(4, 4), warp=True, amplifier='sharpen',
                               learn_sharpen=True, bones=((0, 1),), occlusion=True, retarget=True)
  discriminator = model_lib.MultiScaleDiscriminator(num_scales=2, width=4, num_layers=2, pose_condition=True)
  state = dfc_steps.create_train_state(jax.random.PRNGKey(0), generator, discriminator, tx, tx, (1, 16, 16, 3))
  config = losses.LossConfig(vgg_layers=1, equivariance=1.0, separation=1.0, perceptual_normalize=True,
                             perceptual_scales=2, joint_supervision=1.0)
  step = functools.partial(dfc_steps.train_step, generator=generator, discriminator=discriminator, config=config,
                           vgg_params=losses.vgg16_params(1), key=_KEY)
  batch = _batch(8)
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = jax.make_mesh((len(devices),), ('data',), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
    jitted = jax.jit(step, in_shardings=(replicated, sharded), out_shardings=(replicated, replicated))
    new_state, metrics = jitted(jax.device_put(state, replicated), jax.device_put(batch, sharded))
    results.append((jax.device_get(new_state.params), jax.device_get(metrics)))
  (params_1, metrics_1), (params_8, metrics_8) = results
  assert set(metrics_1) >= {'loss', 'd_loss', 'l1', 'perceptual', 'adversarial', 'feature_matching',
                            'pose_consistency', 'static_consistency', 'self_reconstruction', 'equivariance',
                            'separation', 'joint_supervision'}
  for name in metrics_1:
    np.testing.assert_allclose(metrics_8[name], metrics_1[name], rtol=1e-4, atol=1e-6, err_msg=name)
  # The updates agree to float32 reduction-order noise (L1-type losses turn it into sign flips of tiny residuals),
  # far below the size of the updates themselves; and both networks moved.
  initial = jax.device_get(state.params)
  for net in ('generator', 'discriminator'):
    update = max(jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), params_1[net], initial[net])))
    mismatch = max(jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), params_8[net], params_1[net])))
    assert update > 0 and mismatch < 1e-2 * update


def test_the_step_reports_each_networks_gradient_norm():
  # With SGD at rate 1 a step moves each network by minus its gradients.
  state = dfc_steps.create_train_state(jax.random.PRNGKey(0), _GENERATOR, _DISCRIMINATOR, optax.sgd(1.0),
                                       optax.sgd(1.0), (1, 16, 16, 3))
  new_state, step_metrics = jax.jit(functools.partial(
      dfc_steps.train_step, generator=_GENERATOR, discriminator=_DISCRIMINATOR,
      config=losses.LossConfig(vgg_layers=1), vgg_params=losses.vgg16_params(1)))(state, _batch(2))
  for net, name in (('generator', 'g_grad_norm'), ('discriminator', 'd_grad_norm')):
    moved = optax.tree.norm(jax.tree.map(jnp.subtract, new_state.params[net], state.params[net]))
    assert moved > 0
    np.testing.assert_allclose(step_metrics[name], moved, rtol=1e-4, err_msg=name)


def test_consistency_gradients_reach_the_generator_through_the_reencoding():
  image = jnp.zeros((1, 16, 16, 3))
  g_params = jax.jit(_GENERATOR.init)(_KEY, image, image)['params']
  d_params = jax.jit(_DISCRIMINATOR.init)(_KEY, image, image)['params']
  batch = _batch(2)
  weights = dict(l1=0.0, perceptual=0.0, adversarial=0.0, feature_matching=0.0, self_reconstruction=0.0)

  def grads_of(generator, params, **consistency):
    config = losses.LossConfig(**consistency, **weights)
    loss_fn = lambda g: dfc_steps._generator_loss(g, d_params, batch, 0, generator=generator,  # noqa: E731
                                                  discriminator=_DISCRIMINATOR, config=config, vgg_params=None)[0]
    grads = jax.jit(jax.grad(loss_fn))(params)
    return grads, {k: float(sum(jnp.abs(x).sum() for x in jax.tree.leaves(v))) for k, v in grads.items()}

  # Only one consistency loss is on: the decoder gets gradients solely through E_p(output) or E_s(output).
  _, static = grads_of(_GENERATOR, g_params, pose_consistency=0.0, static_consistency=1.0)
  assert static['generator'] > 0 and static['static_encoder'] > 0
  # Pose consistency trains the generator to draw the source's pose, never E_p: constant keypoints would zero it.
  # With the learned sharpening and the warp (where E_p's keypoints also steer the motion) too.
  # With the learned sharpening, the warp, bone motion and retargeting too.
  for generator in (_GENERATOR, model_lib.DFCNet(num_keypoints=2, pose_widths=(4, 4), widths=(4, 4), warp=True,
                                                 amplifier='sharpen', learn_sharpen=True),
                    model_lib.DFCNet(num_keypoints=2, pose_widths=(4, 4), widths=(4, 4), warp=True, bones=((0, 1),),
                                     occlusion=True, retarget=True)):
    params = g_params if generator is _GENERATOR else jax.jit(generator.init)(_KEY, image, image)['params']
    grads, pose = grads_of(generator, params, pose_consistency=1.0, static_consistency=0.0)
    assert pose['generator'] > 0 and pose['static_encoder'] > 0
    jax.tree.map(lambda g: np.testing.assert_array_equal(g, 0.0), grads['pose_encoder'])
    if 'log_sharpen' in grads:
      assert float(grads['log_sharpen']) == 0.0


def test_joint_supervision_trains_the_pose_encoder_towards_the_true_joints():
  generator = model_lib.DFCNet(num_keypoints=3, pose_widths=(4, 4), widths=(4, 4), warp=True, bones=((0, 1),),
                               retarget=True)
  image = jnp.zeros((1, 16, 16, 3))
  g_params = jax.jit(generator.init)(_KEY, image, image)['params']
  d_params = jax.jit(_DISCRIMINATOR.init)(_KEY, image, image)['params']
  batch = _batch(2)
  off = dict(l1=0.0, perceptual=0.0, adversarial=0.0, feature_matching=0.0, self_reconstruction=0.0,
             use_consistency=False, use_support=False)
  loss_fn = lambda g, w: dfc_steps._generator_loss(  # noqa: E731
      g, d_params, batch, 0, generator=generator, discriminator=_DISCRIMINATOR,
      config=losses.LossConfig(joint_supervision=w, **off), vgg_params=None)
  total, (parts, _, _) = loss_fn(g_params, 2.0)
  # The first J = 2 of the 3 keypoints of the source, the target and the truth against their joints in [-1, 1]
  # units; the retargeted (drawn) source keypoints against the truth's joints.
  to_unit = lambda k: batch[k] / 16 * 2 - 1  # noqa: E731
  code = generator.apply({'params': g_params}, dfc_steps.to_model_range(
      np.concatenate([batch['source'], batch['target'], batch['truth']])), method=model_lib.DFCNet.encode_pose)
  source_kp, target_kp, truth_kp = code.keypoints[:2], code.keypoints[2:4], code.keypoints[4:]
  drawn = generator.apply({'params': g_params}, source_kp, target_kp, method=model_lib.DFCNet.retarget_keypoints)
  expected = sum(float(np.mean(np.abs(kp[:, :2] - to_unit(k)))) for kp, k in
                 ((source_kp, 'source_joints'), (target_kp, 'target_joints'), (truth_kp, 'truth_joints'),
                  (drawn, 'truth_joints')))
  np.testing.assert_allclose(parts['joint_supervision'], expected, rtol=1e-5)
  np.testing.assert_allclose(total, 2.0 * expected, rtol=1e-5)
  grads = jax.grad(lambda g: loss_fn(g, 1.0)[0])(g_params)
  assert sum(float(jnp.abs(x).sum()) for x in jax.tree.leaves(grads['pose_encoder'])) > 0


def _silhouette_batch(seed: int, fraction: float) -> dict[str, np.ndarray]:
  """_batch(2) with random truth and target silhouettes covering about `fraction` of the pixels."""
  batch = _batch(2)
  rng = np.random.default_rng(seed)
  batch['truth_silhouette'] = rng.uniform(size=(2, 16, 16)) < fraction
  batch['target_silhouette'] = rng.uniform(size=(2, 16, 16)) < fraction
  return batch


def _foreground_loss(g_params, batch, **foreground):
  """_generator_loss with every term off but the foreground L1 (LossConfig fields `foreground`)."""
  off = dict(l1=0.0, perceptual=0.0, adversarial=0.0, feature_matching=0.0, self_reconstruction=0.0,
             use_consistency=False, use_support=False)
  return dfc_steps._generator_loss(g_params, None, batch, 0, generator=_GENERATOR, discriminator=_DISCRIMINATOR,
                                   config=losses.LossConfig(**foreground, **off), vgg_params=None)


def test_foreground_loss_is_the_metric_over_the_silhouettes_union_and_ignores_the_background():
  image = jnp.zeros((1, 16, 16, 3))
  g_params = jax.jit(_GENERATOR.init)(_KEY, image, image)['params']
  batch = _silhouette_batch(3, 0.2)
  loss_fn = functools.partial(_foreground_loss, foreground=3.0)
  total, (parts, output, _) = loss_fn(g_params, batch)
  union = batch['truth_silhouette'] | batch['target_silhouette']
  expected = metrics.foreground_l1(np.asarray(dfc_steps.to_unit_range(output)), batch['truth'], union).mean()
  np.testing.assert_allclose(parts['foreground'], expected, rtol=1e-5)
  np.testing.assert_allclose(total, 3.0 * expected, rtol=1e-5)
  # A truth changed only outside both silhouettes changes nothing; inside, it does.
  outside, inside = dict(batch), dict(batch)
  outside['truth'] = np.where(union[..., None], batch['truth'], 1.0 - batch['truth'])
  inside['truth'] = np.where(union[..., None], 1.0 - batch['truth'], batch['truth'])
  assert float(loss_fn(g_params, outside)[0]) == pytest.approx(float(total), rel=1e-6)
  assert abs(float(loss_fn(g_params, inside)[0]) - float(total)) > 1e-3
  # An empty union adds nothing (no division by zero).
  empty = dict(batch, truth_silhouette=np.zeros_like(union), target_silhouette=np.zeros_like(union))
  assert float(loss_fn(g_params, empty)[0]) == 0.0


def test_foreground_band_adds_the_pixels_near_the_truths_silhouette_to_the_mask():
  truth_silhouette = np.zeros((1, 12, 12), bool)
  truth_silhouette[0, 5, 4:7] = True
  grown = np.asarray(losses.dilate(jnp.asarray(truth_silhouette), 2))
  np.testing.assert_array_equal(grown, ndimage.binary_dilation(truth_silhouette, np.ones((1, 5, 5), bool)))
  image = jnp.zeros((1, 16, 16, 3))
  g_params = jax.jit(_GENERATOR.init)(_KEY, image, image)['params']
  batch = _silhouette_batch(4, 0.05)
  _, (parts, output, _) = _foreground_loss(g_params, batch, foreground=1.0, foreground_band=1)
  band = ndimage.binary_dilation(batch['truth_silhouette'], np.ones((1, 3, 3), bool))
  mask = band | batch['target_silhouette']
  assert mask.sum() > (batch['truth_silhouette'] | batch['target_silhouette']).sum()
  expected = metrics.foreground_l1(np.asarray(dfc_steps.to_unit_range(output)), batch['truth'], mask).mean()
  np.testing.assert_allclose(parts['foreground'], expected, rtol=1e-5)


def _blob_batch(n: int, size: int = 32) -> dict[str, np.ndarray]:
  """Each image a Gaussian blob (sigma 1.5 px) on one joint, drawn at random well inside the image."""
  rng = np.random.default_rng(1)
  centres = np.arange(size) + 0.5  # pixel centres at i + 0.5, as the joints'
  batch = {}
  for image, joints in dfc_steps._POSE_IMAGES:
    joint = rng.uniform(0.35 * size, 0.65 * size, (n, 1, 2)).astype(np.float32)
    blob = np.exp(-((centres[None, None, :] - joint[:, 0, 0, None, None]) ** 2 +
                    (centres[None, :, None] - joint[:, 0, 1, None, None]) ** 2) / (2 * 1.5 ** 2))
    batch[image] = (blob[..., None] * np.array([1.0, 0.5, 0.25])).astype(np.float32)
    batch[joints] = joint
  return batch


def test_pose_pretraining_augmentation_moves_the_joints_with_their_images_and_permutes_colours():
  batch = _blob_batch(6)
  config = losses.LossConfig(joint_supervision=1.0, pose_pretrain_steps=1, pose_augment_rotation=30.0,
                             pose_augment_log_scale=0.2, pose_augment_shift=0.15, pose_augment_color=True)
  augmented = jax.jit(functools.partial(dfc_steps.augment_pose_batch, config=config))(_KEY, batch)
  centres = np.arange(32) + 0.5
  for image, joints in dfc_steps._POSE_IMAGES:
    moved = np.asarray(augmented[image])
    assert moved.shape == batch[image].shape
    # The joint is where its blob went (the blob's centroid), to a tenth of a pixel.
    weight = moved.max(axis=-1)
    centroid = np.stack([(weight * centres[None, None, :]).sum((1, 2)), (weight * centres[None, :, None]).sum((1, 2))],
                        -1) / weight.sum((1, 2))[:, None]
    np.testing.assert_allclose(np.asarray(augmented[joints])[:, 0], centroid, atol=0.1)
    assert np.abs(np.asarray(augmented[joints]) - batch[joints]).max() > 1.0  # they did move
    # Colours: each image's channels, reordered (channel 0 of the original holds the blob's peak).
    np.testing.assert_allclose(np.sort(moved.max(axis=(1, 2)), -1)[:, ::-1] / moved.max(axis=(1, 2, 3))[:, None],
                               np.broadcast_to([1.0, 0.5, 0.25], (6, 3)), rtol=1e-4)
  assert len({tuple(np.argsort(np.asarray(augmented['source']).max(axis=(1, 2))[i])) for i in range(6)}) > 1
  # One similarity per sample moves its three images alike: equal inputs stay equal.
  same = {**batch, 'truth': batch['source'], 'truth_joints': batch['source_joints']}
  moved = dfc_steps.augment_pose_batch(_KEY, same, dataclasses.replace(config, pose_augment_color=False))
  np.testing.assert_array_equal(moved['truth'], moved['source'])
  np.testing.assert_array_equal(moved['truth_joints'], moved['source_joints'])
  assert not losses.LossConfig().augments_pose
  with pytest.raises(ValueError, match='pose_augment transform ranges must be >= 0'):
    losses.LossConfig(pose_augment_rotation=-1.0)


def test_pose_pretraining_trains_only_the_pose_encoder_and_retargeter_then_the_whole_step_runs():
  generator = model_lib.DFCNet(num_keypoints=2, pose_widths=(4, 4), widths=(4, 4), warp=True, bones=((0, 1),),
                               retarget=True, amplifier='sharpen', learn_sharpen=True)
  config = losses.LossConfig(perceptual=0.0, joint_supervision=1.0, pose_pretrain_steps=1, adversarial_warmup_steps=1)
  state = dfc_steps.create_train_state(_KEY, generator, _DISCRIMINATOR, optax.adam(1e-2), optax.adam(1e-2),
                                       (1, 16, 16, 3), pose_tx=dfc_steps.make_pose_pretrain_optimizer(1e-2, 1))
  full_step = jax.jit(functools.partial(dfc_steps.train_step, generator=generator, discriminator=_DISCRIMINATOR,
                                        config=config, vgg_params=None))
  batch = _batch(2)
  metric_shapes = jax.eval_shape(full_step, state, batch)[1]
  pretrained, pretrain_metrics = jax.jit(functools.partial(
      dfc_steps.pose_pretrain_step, generator=generator, config=config, metric_shapes=metric_shapes))(state, batch)
  before, after = state.params['generator'], pretrained.params['generator']
  trained = set(dfc_steps.pose_params(before))
  assert trained == {'pose_encoder', 'log_sharpen', 'retargeter'}
  for name in before:
    changed = any(bool(jnp.any(a != b)) for a, b in zip(jax.tree.leaves(before[name]), jax.tree.leaves(after[name])))
    assert changed == (name in trained), name
  # The generator's and discriminator's own optimizers took no step (their schedules start after the pretraining).
  for name in ('generator', 'discriminator'):
    jax.tree.map(np.testing.assert_array_equal, state.opt_state[name], pretrained.opt_state[name])
  jax.tree.map(np.testing.assert_array_equal, state.params['discriminator'], pretrained.params['discriminator'])
  assert set(pretrain_metrics) == set(metric_shapes)
  assert float(pretrain_metrics['joint_supervision']) > 0 and float(pretrain_metrics['l1']) == 0.0
  # With augmentation the step supervises the augmented batch (augment_pose_batch, from the step's key).
  augmenting = dataclasses.replace(config, pose_augment_rotation=20.0, pose_augment_color=True)
  augmented_step = functools.partial(dfc_steps.pose_pretrain_step, generator=generator, config=augmenting,
                                     metric_shapes=metric_shapes)
  _, augmented_metrics = jax.jit(augmented_step)(state, batch, _KEY)
  _, expected = jax.jit(functools.partial(dfc_steps.pose_pretrain_step, generator=generator, config=config,
                                          metric_shapes=metric_shapes))(
      state, dfc_steps.augment_pose_batch(_KEY, batch, augmenting))
  np.testing.assert_allclose(augmented_metrics['joint_supervision'], expected['joint_supervision'], rtol=1e-6)
  assert float(augmented_metrics['joint_supervision']) != float(pretrain_metrics['joint_supervision'])
  with pytest.raises(ValueError, match='needs a key'):
    augmented_step(state, batch)
  # After the pretraining the whole step runs; the adversarial warm-up counts from the pretraining's end.
  _, full_metrics = full_step(pretrained, batch)
  assert float(full_metrics['l1']) > 0 and float(full_metrics['adversarial_scale']) == 0.0


def test_whole_steps_keep_the_pretrained_pose_encoder_when_it_is_not_trained():
  generator = model_lib.DFCNet(num_keypoints=2, pose_widths=(4, 4), widths=(4, 4), warp=True, bones=((0, 1),),
                               retarget=True, amplifier='sharpen', learn_sharpen=True)
  config = losses.LossConfig(perceptual=0.0, joint_supervision=1.0, pose_pretrain_steps=1, train_pose_encoder=False)
  state = dfc_steps.create_train_state(_KEY, generator, _DISCRIMINATOR, optax.adam(1e-2), optax.adam(1e-2),
                                       (1, 16, 16, 3), pose_tx=dfc_steps.make_pose_pretrain_optimizer(1e-2, 1))
  step = jax.jit(functools.partial(dfc_steps.train_step, generator=generator, discriminator=_DISCRIMINATOR,
                                   config=config, vgg_params=None))
  batch = _batch(2)
  after, metrics = step(state, batch)
  before, after = state.params['generator'], after.params['generator']
  for name in before:
    changed = any(bool(jnp.any(a != b)) for a, b in zip(jax.tree.leaves(before[name]), jax.tree.leaves(after[name])))
    assert changed == (name not in ('pose_encoder', 'log_sharpen')), name
  # The truths' keypoints are not supervised (their images do not enter the loss through the pose encoder); the
  # sources' and targets' terms and the drawn keypoints' (the retargeter's) are.
  trained = jax.jit(functools.partial(dfc_steps.train_step, generator=generator, discriminator=_DISCRIMINATOR,
                                      config=dataclasses.replace(config, train_pose_encoder=True), vgg_params=None))
  assert float(metrics['joint_supervision']) < float(trained(state, batch)[1]['joint_supervision'])
  with pytest.raises(ValueError, match='train_pose_encoder=False keeps the pretrained pose encoder'):
    losses.LossConfig(joint_supervision=1.0, train_pose_encoder=False)


def test_pose_pretraining_needs_joint_supervision_and_its_optimizer():
  with pytest.raises(ValueError, match='joint_supervision'):
    losses.LossConfig(pose_pretrain_steps=10)
  state = dfc_steps.create_train_state(_KEY, _GENERATOR, _DISCRIMINATOR, optax.sgd(0.1), optax.sgd(0.1),
                                       (1, 16, 16, 3))
  with pytest.raises(ValueError, match='pose_tx'):
    dfc_steps.pose_pretrain_step(state, _batch(2), generator=_GENERATOR, metric_shapes={},
                                 config=losses.LossConfig(joint_supervision=1.0, pose_pretrain_steps=1))


def test_equivariance_prior_penalises_keypoints_that_ignore_the_image():
  image = jnp.zeros((1, 16, 16, 3))
  g_params = jax.jit(_GENERATOR.init)(_KEY, image, image)['params']
  d_params = jax.jit(_DISCRIMINATOR.init)(_KEY, image, image)['params']
  batch = _batch(2)
  weights = dict(l1=0.0, perceptual=0.0, adversarial=0.0, feature_matching=0.0, self_reconstruction=0.0,
                 use_consistency=False)
  config = losses.LossConfig(equivariance=1.0, support=0.5, **weights)
  key = jax.random.key(3, impl='rbg')
  loss_fn = lambda g: dfc_steps._generator_loss(g, d_params, batch, 0, generator=_GENERATOR,  # noqa: E731
                                                discriminator=_DISCRIMINATOR, config=config, vgg_params=None,
                                                key=key)
  (total, (parts, _, _)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(g_params)
  # Only the pose encoder can lower it.
  assert float(sum(jnp.abs(x).sum() for x in jax.tree.leaves(grads['pose_encoder']))) > 0
  for part in ('generator', 'static_encoder'):
    assert float(sum(jnp.abs(x).sum() for x in jax.tree.leaves(grads[part]))) == 0, part

  # A pose encoder blind to the image (heatmap head zeroed) puts every keypoint at the centre (0, 0), which the
  # transform moves to its shift: the loss is the mean |shift| of the 2 paired + 0.5 x that of the 2 support samples.
  # Conv_0 is the heatmap head (the encoder's other convs sit inside ConvNormAct blocks).
  head = jax.tree.map(jnp.zeros_like, g_params['pose_encoder']['Conv_0'])
  blind = {**g_params, 'pose_encoder': {**g_params['pose_encoder'], 'Conv_0': head}}
  (total, (parts, _, _)), _ = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(blind)
  shift = np.abs(np.asarray(transforms.random_similarity(
      key, 4, max_rotation=config.equivariance_rotation, max_log_scale=config.equivariance_log_scale,
      max_shift=config.equivariance_shift).shift)).mean(axis=1)
  expected = shift[:2].mean() + 0.5 * shift[2:].mean()
  assert expected > 0.01
  np.testing.assert_allclose(parts['equivariance'], expected, rtol=1e-5)
  np.testing.assert_allclose(total, expected, rtol=1e-5)
  with pytest.raises(ValueError, match='needs a key'):
    dfc_steps._generator_loss(g_params, d_params, batch, 0, generator=_GENERATOR, discriminator=_DISCRIMINATOR,
                              config=config, vgg_params=None)


def test_adversarial_warmup_silences_the_discriminator_then_ramps_linearly():
  image = jnp.zeros((1, 16, 16, 3))
  g_params = jax.jit(_GENERATOR.init)(_KEY, image, image)['params']
  d_params = jax.jit(_DISCRIMINATOR.init)(_KEY, image, image)['params']
  other_d_params = jax.jit(_DISCRIMINATOR.init)(jax.random.key(1, impl='rbg'), image, image)['params']
  batch = _batch(2)
  config = losses.LossConfig(perceptual=0.0, adversarial_warmup_steps=4, adversarial_ramp_steps=4)
  # D's parameters and the step are traced: one compilation serves every call.
  loss_fn = lambda g, d, step: dfc_steps._generator_loss(  # noqa: E731
      g, d, batch, step, generator=_GENERATOR, discriminator=_DISCRIMINATOR, config=config, vgg_params=None)[0]
  grad = jax.jit(jax.grad(loss_fn))
  flat = lambda d, step: np.concatenate([np.ravel(x) for x in jax.tree.leaves(grad(g_params, d, step))])  # noqa: E731
  # Up to the end of the warm-up the generator gradient does not depend on D at all ...
  without = flat(d_params, 0)
  for step in (0, 4):
    np.testing.assert_allclose(flat(other_d_params, step), without, rtol=1e-5, atol=1e-7)
  # ... after the ramp it does, and midway through the ramp D's contribution is exactly half.
  full = flat(d_params, 9)
  assert np.abs(flat(other_d_params, 9) - full).max() > 1e-3
  np.testing.assert_allclose(flat(d_params, 8), full, rtol=1e-6, atol=1e-8)
  np.testing.assert_allclose(flat(d_params, 6), 0.5 * (without + full), rtol=1e-4, atol=1e-6)


def test_without_adversarial_terms_the_discriminator_is_neither_run_nor_trained():
  state = dfc_steps.create_train_state(jax.random.PRNGKey(0), _GENERATOR, _DISCRIMINATOR, optax.sgd(0.1),
                                       optax.sgd(0.1), (1, 16, 16, 3))
  step = lambda config: jax.jit(functools.partial(  # noqa: E731
      dfc_steps.train_step, generator=_GENERATOR, discriminator=_DISCRIMINATOR, config=config, vgg_params=None))(
          state, _batch(2))
  plain, plain_metrics = step(losses.LossConfig(perceptual=0.0, adversarial=0.0, feature_matching=0.0))
  # The same generator update as the terms silenced by the warm-up, whose discriminator does train.
  warming, warming_metrics = step(losses.LossConfig(perceptual=0.0, adversarial_warmup_steps=10))
  for a, b in zip(jax.tree.leaves(plain.params['generator']), jax.tree.leaves(warming.params['generator'])):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)
  unchanged = lambda s: all(np.array_equal(a, b) for a, b in zip(  # noqa: E731
      jax.tree.leaves(s.params['discriminator']), jax.tree.leaves(state.params['discriminator'])))
  assert unchanged(plain) and not unchanged(warming)
  assert {'d_loss', 'adversarial', 'd_grad_norm'} <= set(warming_metrics)
  assert not {'d_loss', 'adversarial', 'feature_matching', 'd_grad_norm'} & set(plain_metrics)



def test_drawn_keypoints_are_the_retargeted_source_keypoints():
  batch = _batch(3)
  for retarget in (False, True):
    generator = model_lib.DFCNet(num_keypoints=2, pose_widths=(4, 4), widths=(4, 4), warp=True, retarget=retarget)
    params = generator.init(_KEY, batch['source'], batch['target'])['params']
    if retarget:  # away from the retargeter's identity start, so that retargeting moves the keypoints
      params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(_KEY, p.shape), params)
    source_kp, target_kp = (dfc_steps.keypoints(params, batch[k], generator=generator) for k in ('source', 'target'))
    drawn = dfc_steps.drawn_keypoints(params, batch['source'], batch['target'], generator=generator)
    expected = (generator.apply({'params': params}, source_kp, target_kp,
                                method=model_lib.DFCNet.retarget_keypoints) if retarget else source_kp)
    np.testing.assert_allclose(drawn, expected, atol=1e-5)
    assert retarget == (np.abs(np.asarray(drawn) - np.asarray(source_kp)).max() > 1e-3)
