"""DFC-Net train state, the G + D step and the pose pretraining step: pure, jit-able, shardable over a 'data' axis
(no collectives inside).

batch: {'source', 'target', 'truth'} float32 [B,H,W,3] in [0, 1] (paired), plus optionally
{'support_source', 'support_target'} [B_sup,H,W,3] (unpaired support data, no ground truth) and, for joint
supervision (losses.LossConfig.joint_supervision), the renderer's {'source_joints', 'target_joints',
'truth_joints'} float32 [B,J,2] in pixels (pixel centres at i + 0.5).
"""
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from dfc_jax import losses
from dfc_jax import model as model_lib
from dfc_jax import transforms


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: dict[str, Any]        # {'generator': DFCNet params, 'discriminator': MultiScaleDiscriminator params}
  batch_stats: dict[str, Any]   # empty: DFC-Net uses instance norm only (kept for the checkpoint layout)
  opt_state: dict[str, Any]     # {'generator': ..., 'discriminator': ...[, 'pose_pretrain': ...]}
  g_tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  d_tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  # The pose pretraining's own optimizer (losses.LossConfig.pose_pretrain_steps), of pose_params(generator params):
  # with g_tx, Adam's step count would run on through the pretraining while the other parameters' moments stayed 0,
  # and its bias correction would then make their first updates ~30x too large.
  pose_tx: optax.GradientTransformation | None = flax.struct.field(pytree_node=False, default=None)


def make_optimizer(learning_rate: float, b1: float, b2: float, num_steps: int,
                   decay_start: float = 0.5) -> optax.GradientTransformation:
  """Adam with a constant rate, decayed linearly to 0 from decay_start * num_steps to num_steps."""
  constant_steps = int(num_steps * decay_start)
  schedule = optax.join_schedules(
      [optax.constant_schedule(learning_rate),
       optax.linear_schedule(learning_rate, 0.0, max(1, num_steps - constant_steps))], [constant_steps])
  return optax.adam(schedule, b1=b1, b2=b2)


def make_pose_pretrain_optimizer(learning_rate: float, num_steps: int) -> optax.GradientTransformation:
  """Adam (b1 0.9, a supervised regression's) with a cosine decay to 0 over the pretraining's num_steps."""
  return optax.adam(optax.cosine_decay_schedule(learning_rate, max(1, num_steps)))


def to_model_range(images: jax.Array) -> jax.Array:
  """[0, 1] -> [-1, 1]."""
  return images * 2.0 - 1.0


def to_unit_range(images: jax.Array) -> jax.Array:
  """[-1, 1] -> [0, 1], clipped."""
  return jnp.clip((images + 1.0) * 0.5, 0.0, 1.0)


def create_train_state(key: jax.Array, generator: model_lib.DFCNet, discriminator: model_lib.MultiScaleDiscriminator,
                       g_tx: optax.GradientTransformation, d_tx: optax.GradientTransformation,
                       image_shape: tuple[int, int, int, int] = (1, 64, 64, 3),
                       pose_tx: optax.GradientTransformation | None = None) -> TrainState:
  """Fresh generator and discriminator parameters with their optimizer states (deterministic from `key`); pose_tx:
  the pose pretraining's optimizer (make_pose_pretrain_optimizer), when it pretrains."""
  # Jitted: initialising op by op dispatches hundreds of tiny computations, which is slow on a CPU.
  return jax.jit(functools.partial(_init_state, generator=generator, discriminator=discriminator, g_tx=g_tx,
                                   d_tx=d_tx, image_shape=tuple(image_shape), pose_tx=pose_tx))(key)


def _init_state(key, *, generator, discriminator, g_tx, d_tx, image_shape, pose_tx) -> TrainState:
  # The initialisers draw from an 'rbg' key seeded by `key`: XLA compiles threefry's unrolled rounds for every
  # parameter, which makes initialisation compile ~7x slower on a CPU.
  rbg_key = jax.random.key(jax.random.bits(key, dtype=jnp.uint32), impl='rbg')
  g_key, d_key = jax.random.split(rbg_key)
  image = jnp.zeros(image_shape, jnp.float32)
  g_params = generator.init(g_key, image, image)['params']
  pose_maps = jnp.zeros((*image_shape[:3], generator.num_keypoints)) if discriminator.pose_condition else None
  d_params = discriminator.init(d_key, image, image, pose_maps)['params']
  opt_state = {'generator': g_tx.init(g_params), 'discriminator': d_tx.init(d_params)}
  if pose_tx is not None:
    opt_state['pose_pretrain'] = pose_tx.init(pose_params(g_params))
  return TrainState(step=jnp.zeros((), jnp.int32), params={'generator': g_params, 'discriminator': d_params},
                    batch_stats={}, opt_state=opt_state, g_tx=g_tx, d_tx=d_tx, pose_tx=pose_tx)


# The pose encoder's parameters (the learned sharpening is part of it).
_POSE_PARAMS = ('pose_encoder', 'log_sharpen')


def pose_params(g_params: dict[str, Any]) -> dict[str, Any]:
  """The generator parameters the pose pretraining trains: the pose encoder's and the retargeter's."""
  return {k: v for k, v in g_params.items() if k in (*_POSE_PARAMS, 'retargeter')}


def _weighted(per_sample: jax.Array, num_paired: int, support_weight: float) -> jax.Array:
  """Mean over the paired samples plus support_weight x mean over the support samples that follow them."""
  paired = jnp.mean(per_sample[:num_paired])
  if per_sample.shape[0] == num_paired:
    return paired
  return paired + support_weight * jnp.mean(per_sample[num_paired:])


def _generator_loss(g_params, d_params, batch, step, *, generator, discriminator, config: losses.LossConfig,
                    vgg_params, key=None):
  """Total generator loss at `step`, its parts, and the fakes (with their conditions) for the discriminator step.

  `key` draws the equivariance prior's transforms (needed only when config.equivariance > 0).
  """
  source, target, truth = (to_model_range(batch[k]) for k in ('source', 'target', 'truth'))
  num_paired = source.shape[0]
  if config.use_support and 'support_source' in batch:
    source = jnp.concatenate([source, to_model_range(batch['support_source'])])
    target = jnp.concatenate([target, to_model_range(batch['support_target'])])
  n = source.shape[0]
  apply = lambda method, *args: generator.apply({'params': g_params}, *args, method=method)  # noqa: E731

  # One pose-encoder pass for sources, targets (and warped sources; and the truths under joint supervision), one
  # decoder pass for transfers and self-reconstructions.
  pose_inputs = [source, target]
  if config.equivariance > 0:
    if key is None:
      raise ValueError('the equivariance prior (config.equivariance > 0) needs a key for its random transforms')
    transform = transforms.random_similarity(key, n, max_rotation=config.equivariance_rotation,
                                             max_log_scale=config.equivariance_log_scale,
                                             max_shift=config.equivariance_shift)
    pose_inputs.append(transforms.warp_images(source, transform))
  # The truths' keypoints serve only to supervise a pose encoder that trains.
  supervise_truth = config.joint_supervision > 0 and config.train_pose_encoder
  if supervise_truth:
    pose_inputs.append(truth)
  pose_encoder_params = g_params if config.train_pose_encoder else _frozen_pose(g_params)
  keypoints = generator.apply({'params': pose_encoder_params}, jnp.concatenate(pose_inputs),
                              method=model_lib.DFCNet.encode_pose).keypoints
  static = apply(model_lib.DFCNet.encode_static, target)
  # Transfers take the sources' keypoints, self-reconstructions the targets' own; with warp, both move the target.
  # Without self-reconstruction (weight 0) only the transfers are decoded.
  target_keypoints = keypoints[n:2 * n]
  copies = 2 if config.self_reconstruction > 0 else 1
  decoded = apply(model_lib.DFCNet.decode, keypoints[:copies * n], [jnp.concatenate([f] * copies) for f in static],
                  jnp.concatenate([target_keypoints] * copies), jnp.concatenate([target] * copies))
  output = decoded[:n]
  # The keypoints the transfers are drawn in (the source's, moved onto the target's body with retarget).
  drawn_keypoints = (apply(model_lib.DFCNet.retarget_keypoints, keypoints[:n], target_keypoints) if generator.retarget
                     else keypoints[:n])

  parts = {'l1': jnp.mean(losses.l1(output[:num_paired], truth))}
  weights = {'l1': config.l1}
  condition = None
  if config.adversarial_training:
    # The discriminator sees the target and, when pose-conditioned, the drawn keypoints' maps (constants to G).
    condition = (target, _pose_condition(drawn_keypoints, source.shape[1:3], generator, discriminator))
    d_fake = discriminator.apply({'params': d_params}, output, *condition)
    d_real = discriminator.apply({'params': d_params}, truth, *_paired_part(condition, num_paired))
    parts['adversarial'] = _weighted(losses.generator_adversarial(d_fake, config.gan_type), num_paired,
                                     config.support)
    parts['feature_matching'] = jnp.mean(losses.feature_matching([[f[:num_paired] for f in o] for o in d_fake],
                                                                 d_real))
    # The adversarial warmup counts from the end of the pose pretraining.
    gan_scale = losses.adversarial_scale(step - config.pose_pretrain_steps, config.adversarial_warmup_steps,
                                         config.adversarial_ramp_steps)
    weights.update(adversarial=gan_scale * config.adversarial, feature_matching=gan_scale * config.feature_matching)
  if config.foreground > 0:
    # The silhouettes' union (the metric's mask), the truth's grown by the band.
    mask = jnp.logical_or(losses.dilate(batch['truth_silhouette'], config.foreground_band),
                          batch['target_silhouette'])
    # Half the model range's L1: the [0, 1] units of the metric.
    parts['foreground'] = jnp.mean(losses.foreground_l1(output[:num_paired], truth, mask)) / 2
    weights['foreground'] = config.foreground
  if config.self_reconstruction > 0:
    parts['self_reconstruction'] = _weighted(losses.l1(decoded[n:], target), num_paired, config.support)
    weights['self_reconstruction'] = config.self_reconstruction
  if config.perceptual > 0:
    parts['perceptual'] = jnp.mean(losses.perceptual(vgg_params, output[:num_paired], truth, config.vgg_layers,
                                                     config.perceptual_normalize, config.perceptual_scales))
    weights['perceptual'] = config.perceptual
  if config.separation > 0:
    # Of the sources' and of the targets' keypoints.
    separation = [losses.separation(k, config.separation_sigma) for k in (keypoints[:n], keypoints[n:2 * n])]
    parts['separation'] = _weighted((separation[0] + separation[1]) / 2, num_paired, config.support)
    weights['separation'] = config.separation
  if config.equivariance > 0:
    moved = transforms.transform_points(keypoints[:n], transform)
    parts['equivariance'] = _weighted(losses.l1(keypoints[2 * n:3 * n], moved), num_paired, config.support)
    weights['equivariance'] = config.equivariance
  if config.joint_supervision > 0:
    parts['joint_supervision'] = _joint_supervision(keypoints[:num_paired], keypoints[n:n + num_paired],
                                                    keypoints[-num_paired:] if supervise_truth else None,
                                                    drawn_keypoints[:num_paired], batch, generator)
    weights['joint_supervision'] = config.joint_supervision
  if config.use_consistency:
    # The output is re-encoded with gradients flowing into it (so into G). The pose term gives E_p none: constant
    # keypoints would make it exactly zero, so training E_p on it pushes the keypoints to collapse. So it re-encodes
    # an output decoded from keypoints without gradient, with E_p's parameters frozen, against the constant
    # keypoints it was drawn in. The static term trains E_s on both sides (its Gram matrices carry no position).
    frozen_pose = _frozen_pose(g_params)
    fixed_keypoints = jax.lax.stop_gradient(keypoints[:2 * n])
    pose_output = apply(model_lib.DFCNet.decode, fixed_keypoints[:n], static, fixed_keypoints[n:], target)
    keypoints_output = generator.apply({'params': frozen_pose}, pose_output,
                                       method=model_lib.DFCNet.encode_pose).keypoints
    static_output = apply(model_lib.DFCNet.encode_static, output)[-1]
    parts['pose_consistency'] = _weighted(
        losses.pose_consistency(keypoints_output, jax.lax.stop_gradient(drawn_keypoints)), num_paired,
        config.support)
    parts['static_consistency'] = _weighted(losses.static_consistency(static_output, static[-1]), num_paired,
                                            config.support)
    weights['pose_consistency'] = config.pose_consistency
    weights['static_consistency'] = config.static_consistency
  total = sum(weights[k] * parts[k] for k in parts)
  # Spread of the source keypoints over the batch: about 0 when the pose encoder has collapsed to fixed points.
  parts['keypoint_spread'] = jnp.mean(jnp.std(keypoints[:n], axis=0))
  if config.adversarial_training:
    parts['adversarial_scale'] = gan_scale
  return total, (parts, output, condition)


def _frozen_pose(g_params: dict[str, Any]) -> dict[str, Any]:
  """g_params with the pose encoder's parameters held constant (no gradient reaches them)."""
  return {k: jax.lax.stop_gradient(v) if k in _POSE_PARAMS else v for k, v in g_params.items()}


def _joint_supervision(source_keypoints, target_keypoints, truth_keypoints, drawn_keypoints, batch,
                       generator: model_lib.DFCNet) -> jax.Array:
  """Sum over the source, target and truth images (the truth's left out when truth_keypoints is None; and, with
  retarget, the drawn keypoints against the truth's joints) of the mean L1 between their first J keypoints and
  their J true joints, in [-1, 1] units."""
  size = batch['source'].shape[1]
  pairs = [(source_keypoints, 'source_joints'), (target_keypoints, 'target_joints')]
  if truth_keypoints is not None:
    pairs.append((truth_keypoints, 'truth_joints'))
  if generator.retarget:
    pairs.append((drawn_keypoints, 'truth_joints'))
  num_joints = batch['source_joints'].shape[1]
  return sum(jnp.mean(losses.l1(k[:, :num_joints], batch[name] / size * 2.0 - 1.0)) for k, name in pairs)


_POSE_IMAGES = (('source', 'source_joints'), ('target', 'target_joints'), ('truth', 'truth_joints'))


def augment_pose_batch(key: jax.Array, batch: dict[str, jax.Array], config: losses.LossConfig
                       ) -> dict[str, jax.Array]:
  """The pose pretraining's batch augmented as config.pose_augment_* say (losses.LossConfig): one random similarity
  per sample moves its source, target and truth images (bilinear, edges extended) and their joints (pixels) alike,
  so the truth stays the target's body in the source's pose; with pose_augment_color every image's RGB channels
  are put in a random order of their own."""
  batch = dict(batch)
  geometric_key, color_key = jax.random.split(key)
  if config.pose_augment_rotation or config.pose_augment_log_scale or config.pose_augment_shift:
    size = jnp.array(batch['source'].shape[2:0:-1], jnp.float32)  # (width, height), as the joints' (x, y)
    transform = transforms.random_similarity(geometric_key, batch['source'].shape[0],
                                             max_rotation=config.pose_augment_rotation,
                                             max_log_scale=config.pose_augment_log_scale,
                                             max_shift=config.pose_augment_shift)
    for image, joints in _POSE_IMAGES:
      batch[image] = transforms.warp_images(batch[image], transform)
      moved = transforms.transform_points(batch[joints] / size * 2.0 - 1.0, transform)
      batch[joints] = (moved + 1.0) / 2.0 * size
  if config.pose_augment_color:
    for (image, _), image_key in zip(_POSE_IMAGES, jax.random.split(color_key, len(_POSE_IMAGES))):
      orders = jax.vmap(lambda k: jax.random.permutation(k, 3))(jax.random.split(image_key, batch[image].shape[0]))
      batch[image] = jnp.take_along_axis(batch[image], orders[:, None, None, :], axis=-1)
  return batch


def pose_pretrain_step(state: TrainState, batch: dict[str, jax.Array], key: jax.Array | None = None, *,
                       generator: model_lib.DFCNet, config: losses.LossConfig,
                       metric_shapes: dict[str, jax.ShapeDtypeStruct]) -> tuple[TrainState, dict[str, jax.Array]]:
  """A step of the first losses.LossConfig.pose_pretrain_steps: the joint supervision alone trains pose_params
  with state.pose_tx (create_train_state's pose_tx); the rest of the generator, the discriminator and their
  optimizer states are not run and do not change. With config.augments_pose the batch is augmented first
  (augment_pose_batch, from `key`). Metrics: those of metric_shapes (train_step's, from jax.eval_shape), 0 but for
  'joint_supervision', 'loss' and 'keypoint_spread'.
  """
  if state.pose_tx is None:
    raise ValueError('pose_pretrain_step needs a TrainState made with pose_tx (create_train_state)')
  if config.augments_pose:
    if key is None:
      raise ValueError('the pose pretraining augmentation (config.pose_augment_*) needs a key')
    batch = augment_pose_batch(key, batch, config)
  g_params = state.params['generator']
  images = to_model_range(jnp.concatenate([batch[k] for k in ('source', 'target', 'truth')]))

  def loss_fn(trained):
    g = {**g_params, **trained}
    apply = lambda method, *args: generator.apply({'params': g}, *args, method=method)  # noqa: E731
    source_kp, target_kp, truth_kp = jnp.split(apply(model_lib.DFCNet.encode_pose, images).keypoints, 3)
    drawn = apply(model_lib.DFCNet.retarget_keypoints, source_kp, target_kp) if generator.retarget else source_kp
    supervised = _joint_supervision(source_kp, target_kp, truth_kp, drawn, batch, generator)
    return config.joint_supervision * supervised, (supervised, source_kp)

  trained = pose_params(g_params)
  (loss, (supervised, source_kp)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trained)
  updates, pose_opt = state.pose_tx.update(grads, state.opt_state['pose_pretrain'], trained)
  metrics = {k: jnp.zeros(v.shape, v.dtype) for k, v in metric_shapes.items()}
  metrics.update(loss=loss, joint_supervision=supervised, keypoint_spread=jnp.mean(jnp.std(source_kp, axis=0)))
  return state.replace(step=state.step + 1,
                       params={**state.params, 'generator': {**g_params, **optax.apply_updates(trained, updates)}},
                       opt_state={**state.opt_state, 'pose_pretrain': pose_opt}), metrics


def _pose_condition(keypoints, image_size, generator: model_lib.DFCNet,
                    discriminator: model_lib.MultiScaleDiscriminator) -> jax.Array | None:
  """The pose keypoints' Gaussian maps at full resolution for a pose-conditioned discriminator (else None)."""
  if not discriminator.pose_condition:
    return None
  return model_lib.render_gaussians(jax.lax.stop_gradient(keypoints), image_size, generator.sigma)


def _paired_part(condition, num_paired: int):
  return tuple(None if c is None else c[:num_paired] for c in condition)


def _discriminator_loss(d_params, fake, fake_condition, truth, truth_condition, num_paired, *, discriminator,
                        config: losses.LossConfig):
  real_out = discriminator.apply({'params': d_params}, truth, *truth_condition)
  fake_out = discriminator.apply({'params': d_params}, fake, *fake_condition)
  real_loss, fake_loss = losses.discriminator_adversarial(real_out, fake_out, config.gan_type)
  fake_term = _weighted(fake_loss, num_paired, config.support)
  return jnp.mean(real_loss) + fake_term, {'d_real': jnp.mean(real_loss), 'd_fake': fake_term}


def train_step(state: TrainState, batch: dict[str, jax.Array], *, generator: model_lib.DFCNet,
               discriminator: model_lib.MultiScaleDiscriminator, config: losses.LossConfig,
               vgg_params: dict[str, Any] | None, key: jax.Array | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One generator update then one discriminator update on the generator's outputs before its update (the steps
  after config.pose_pretrain_steps; pose_pretrain_step before them). Without adversarial training
  (config.adversarial_training) the discriminator is neither run nor trained.

  `key` is this step's randomness (the equivariance prior's transforms); steps without that prior draw none.

  Metrics: 'loss' (generator total), every weighted part's unweighted value, 'keypoint_spread' (the source
  keypoints' standard deviation over the batch, in [-1, 1] units, averaged over keypoints and axes) and the global
  norm of the generator's gradients ('g_grad_norm'); with adversarial training also 'd_loss', 'd_real', 'd_fake',
  'adversarial_scale' (losses.adversarial_scale at this step) and the discriminator's gradient norm
  ('d_grad_norm'; a runaway of the generator's weights, an adversarial collapse, shows in both a few steps before
  the L1 rises).
  """
  g_params, d_params = state.params['generator'], state.params['discriminator']
  g_loss_fn = lambda g: _generator_loss(g, d_params, batch, state.step, generator=generator,  # noqa: E731
                                        discriminator=discriminator, config=config, vgg_params=vgg_params,
                                        key=key)
  (g_loss, (parts, fake, fake_condition)), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(g_params)
  g_updates, g_opt = state.g_tx.update(g_grads, state.opt_state['generator'], g_params)
  metrics = {'loss': g_loss, **parts, 'g_grad_norm': optax.tree.norm(g_grads)}
  opt_state = {**state.opt_state, 'generator': g_opt}
  if config.adversarial_training:
    truth = to_model_range(batch['truth'])
    num_paired = truth.shape[0]
    (d_loss, d_parts), d_grads = jax.value_and_grad(_discriminator_loss, has_aux=True)(
        d_params, jax.lax.stop_gradient(fake), fake_condition, truth, _paired_part(fake_condition, num_paired),
        num_paired, discriminator=discriminator, config=config)
    d_updates, opt_state['discriminator'] = state.d_tx.update(d_grads, state.opt_state['discriminator'], d_params)
    d_params = optax.apply_updates(d_params, d_updates)
    metrics.update(d_loss=d_loss, **d_parts, d_grad_norm=optax.tree.norm(d_grads))
  new_state = state.replace(step=state.step + 1,
                            params={'generator': optax.apply_updates(g_params, g_updates), 'discriminator': d_params},
                            opt_state=opt_state)
  return new_state, metrics


def transfer(g_params, source: jax.Array, target: jax.Array, *, generator: model_lib.DFCNet) -> jax.Array:
  """Target's appearance in the source's pose; [0, 1] images in and out.

  Inference (transfer and evaluation) runs its convolutions and matmuls at full float32 on every platform, not at
  jax's default (bfloat16 passes on TPUs, TF32 on GPUs), so that outputs and metric tables do not depend on it.
  """
  with jax.default_matmul_precision('highest'):
    output = generator.apply({'params': g_params}, to_model_range(source), to_model_range(target))
  return to_unit_range(output)


def keypoints(g_params, images: jax.Array, *, generator: model_lib.DFCNet) -> jax.Array:
  """The pose encoder's keypoints [N,K,2] in [-1, 1] of [0, 1] images (at full float32, as transfer)."""
  with jax.default_matmul_precision('highest'):
    return generator.apply({'params': g_params}, to_model_range(images),
                           method=model_lib.DFCNet.encode_pose).keypoints


def drawn_keypoints(g_params, source: jax.Array, target: jax.Array, *, generator: model_lib.DFCNet) -> jax.Array:
  """The keypoints [N,K,2] the output is drawn in: the source's, retargeted onto the target's body when the
  generator retargets ([0, 1] images, full float32 as transfer)."""
  with jax.default_matmul_precision('highest'):
    apply = lambda method, *args: generator.apply({'params': g_params}, *args, method=method)  # noqa: E731
    source_kp, target_kp = jnp.split(apply(model_lib.DFCNet.encode_pose, to_model_range(
        jnp.concatenate([source, target]))).keypoints, 2)
    return apply(model_lib.DFCNet.retarget_keypoints, source_kp, target_kp)
