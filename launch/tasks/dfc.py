"""DFC-Net as a training task (launch/task.py): dfc_jax's G + D step on the pose-transfer pipelines of
input_pipeline (puppets or video frames); and loading a trained generator back from a checkpoint (for
launch.transfer and launch.evaluate_dfc)."""
import dataclasses
import functools
import hashlib
import json
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from dfc_jax import evaluate as dfc_evaluate
from dfc_jax import joint_regressor
from dfc_jax import losses
from dfc_jax import metrics
from dfc_jax import model as model_lib
from dfc_jax import steps as dfc_steps
from input_pipeline import errors
from input_pipeline import pose_data
from input_pipeline import puppets
from launch import checkpoints
from launch import compile_cache
from launch import task as task_lib


def loss_config_from(config: ml_collections.ConfigDict) -> losses.LossConfig:
  """LossConfig of config.loss; support losses are on exactly when config.data.support is. A combination it
  rejects is a ConfigError (one line for the user)."""
  try:
    return losses.LossConfig(**config.loss.to_dict(), use_support=bool(config.data.support))
  except ValueError as e:
    raise errors.ConfigError(f'config.loss: {e}') from None


def model_config_from(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The JSON model config saved in checkpoints: generator and discriminator kwargs and the image size."""
  return {'generator': config.model.to_dict(), 'discriminator': config.discriminator.to_dict(),
          'image_size': config.data.image_size}


class DFCCheckpointError(checkpoints.CheckpointError):
  """A checkpoint that is not a DFC-Net one; the message names the directory."""


def load_generator(checkpoint: str | os.PathLike, step: int | None = None):
  """(DFCNet, generator params, image size) of a DFC-Net checkpoint (latest step by default)."""
  variables, config = checkpoints.restore_model_variables(checkpoint, step)
  if config.get('model') != 'dfc':
    raise DFCCheckpointError(f"{checkpoint}: checkpoint of model {config.get('model')!r}, not a DFC-Net ('dfc') one")
  model_config = config['model_config']
  return (model_lib.generator_from_config(model_config['generator']), variables['params']['generator'],
          int(model_config['image_size']))


def training_data_config(checkpoint: str | os.PathLike, step: int | None = None) -> ml_collections.ConfigDict:
  """The data config a DFC-Net training checkpoint was trained with."""
  config = checkpoints.restore_config(checkpoint, step)
  experiment = config.get('experiment')
  if config.get('model') != 'dfc' or not experiment or 'data' not in experiment:
    raise DFCCheckpointError(f'{checkpoint}: not a DFC-Net training checkpoint (needs its experiment config)')
  return ml_collections.ConfigDict(experiment['data'])


def trained_on_joints(checkpoint: str | os.PathLike, step: int | None = None) -> bool:
  """Whether a DFC-Net training checkpoint's pose encoder was supervised with the renderer's joints (its first
  keypoints are named joints, losses.LossConfig.joint_supervision)."""
  config = checkpoints.restore_config(checkpoint, step)
  loss = (config.get('experiment') or {}).get('loss') or {}
  return config.get('model') == 'dfc' and float(loss.get('joint_supervision', 0.0)) > 0


def named_joints_readout(generator: model_lib.DFCNet, data_config: ml_collections.ConfigDict) -> np.ndarray:
  """The encoder read-out (dfc_evaluate.Evaluator.evaluate's encoder_map) of a pose encoder supervised with the
  puppets' joints: its first keypoints are the joints (metrics.named_joint_readout); no calibration renders."""
  size = data_config.image_size
  return metrics.named_joint_readout(generator.num_keypoints, puppets.NUM_JOINTS, (size, size))


def training_crop(checkpoint: str | os.PathLike, step: int | None = None) -> str:
  """How the checkpoint's training images were cropped ('center', 'none' or 'top,left,height,width'): its data.crop
  for video frames, 'center' otherwise (puppet renders are square)."""
  data = training_data_config(checkpoint, step)
  return data.get('crop', 'center') if data.name == 'frames' else 'center'


# Bump when the regressor's training changes, so that cached parameters of the old one are not reused.
_REGRESSOR_VERSION = 1


def regressor_cache_dir() -> pathlib.Path:
  """Where fixed joint regressors are cached: $DFC_REGRESSOR_CACHE, else $XDG_CACHE_HOME/dfc_jax
  (~/.cache/dfc_jax by default)."""
  if os.environ.get('DFC_REGRESSOR_CACHE'):
    return pathlib.Path(os.environ['DFC_REGRESSOR_CACHE'])
  return _user_cache_dir()


def _user_cache_dir() -> pathlib.Path:
  """$XDG_CACHE_HOME/dfc_jax: the fixed regressors' and the render caches' default home."""
  return compile_cache.user_cache_root() / 'dfc_jax'


def fixed_joint_regressor(data_config: ml_collections.ConfigDict, num_steps: int,
                          num_renders: int = 4096) -> Callable[[np.ndarray], np.ndarray]:
  """The fixed joint regressor (dfc_jax.joint_regressor) of a puppet world and image size, as images -> joints in
  pixels: trained on `num_renders` train-split pairs (their source and truth renders) for `num_steps`,
  deterministically, and cached (regressor_cache_dir) under a name that hashes everything it depends on. It never
  sees a DFC-Net model, so every model and every trivial output is judged by the same one."""
  world = dataclasses.asdict(pose_data.make_world(data_config))
  regressor_config = joint_regressor.RegressorConfig(num_steps=num_steps)
  identity = json.dumps({'version': _REGRESSOR_VERSION, 'world': world, 'size': data_config.image_size,
                         'renders': num_renders, 'config': regressor_config._asdict()}, sort_keys=True)
  path = regressor_cache_dir() / f'joint_regressor_{hashlib.sha256(identity.encode()).hexdigest()[:16]}.msgpack'
  if path.exists():
    params = flax.serialization.msgpack_restore(path.read_bytes())
  else:
    renders = pose_data.make_calibration_set(data_config, num_renders, sample_seed=2, with_truths=True)
    bar = functools.partial(tqdm.tqdm, desc='joint regressor (first use; cached after)', unit='step',
                            dynamic_ncols=True)
    params = joint_regressor.fit(renders['images'], renders['joints'], regressor_config, progress=bar)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f'.tmp{os.getpid()}')
    temporary.write_bytes(flax.serialization.msgpack_serialize(params))
    temporary.replace(path)  # atomic: concurrent evaluations never read half a file
  return functools.partial(joint_regressor.predict, params, num_joints=puppets.NUM_JOINTS, config=regressor_config)


def generator_collapse(history: Sequence[tuple[int, Mapping[str, float]]], *, ratio: float, first_step: int,
                       log_every: int) -> str | None:
  """Why the generator has collapsed, or None: the newest log interval's mean L1 (the outputs against the truths)
  above `ratio` x the lowest earlier one (ratio <= 0: never). Only intervals after `first_step` count (the pose
  pretraining's, which run no generator, log an L1 of 0); history is launch.task.Watched's."""
  if ratio <= 0:
    return None
  whole = [(step, means['l1']) for step, means in history if step - log_every >= first_step and 'l1' in means]
  if len(whole) < 2:
    return None
  step, latest = whole[-1]
  best_step, best = min(whole[:-1], key=lambda record: record[1])
  if latest <= ratio * best:
    return None
  return (f'the generator collapsed (an adversarial collapse: the losses stay finite, the outputs stop matching): '
          f'the mean L1 of the steps up to {step} is {latest:.3g}, {latest / best:.1f}x the lowest before it '
          f'({best:.3g}, up to step {best_step}; config.collapse_l1_ratio is {ratio:g}). Resuming would repeat the '
          'same steps: train again in a new --workdir with another --config.seed or a lower '
          '--config.optimizer.learning_rate, or turn this check off with --config.collapse_l1_ratio=0')


class DFCTask(task_lib.Task):
  """Trains DFC-Net on puppets or video frames; evaluates SSIM, PSNR and LPIPS on the test splits, and on puppets
  also silhouette IoU, foreground L1 and keypoint error (fixed_joint_regressor), beside the trivial outputs
  (dfc_evaluate.TRIVIAL_ROWS).

  Evaluation metrics are named '{split}/{metric}' for the model and '{split}/{row}/{metric}' for the trivial rows;
  the grid shows source | target | output | truth rows of the first split.
  """

  name = 'dfc'
  # Checkpoints written before the equivariance prior, video-frame training, the keypoint warp, the learned
  # sharpening, the pose-conditioned discriminator, the normalised perceptual loss, the separation prior, bone
  # motion, the occlusion map, retargeting (and its skeleton), joint supervision, the pose encoder's hourglass, limb
  # mixing, the pose pretraining's augmentation and the foreground L1 used none; all trained the pose encoder
  # throughout.
  added_field_defaults = {**{f'loss.{f.name}': f.default for f in dataclasses.fields(losses.LossConfig)
                             if f.name.startswith(('equivariance', 'pose_augment'))},
                          **{f'data.{k}': v for k, v in pose_data.FRAMES_DEFAULTS.items()},
                          'model.warp': False, 'model.learn_sharpen': False, 'discriminator.pose_condition': False,
                          'loss.perceptual_normalize': False, 'loss.perceptual_scales': 1, 'loss.separation': 0.0,
                          'loss.separation_sigma': 0.1, 'eval.regressor_steps': 800, 'eval.regressor_renders': 1024,
                          'model.bones': None, 'model.pose_upsample': 0, 'model.skeleton': None,
                          'model.occlusion': False, 'model.retarget': False, 'loss.joint_supervision': 0.0,
                          'loss.pose_pretrain_steps': 0, 'data.render_cache': False, 'data.render_cache_dir': None,
                          'data.limb_mixing': 0.0, 'data.limb_mixing_steps': 0, 'loss.foreground': 0.0,
                          'loss.train_pose_encoder': True}
  # Where the render cache lives does not change what it holds; the collapse check changes no step.
  resumable_fields = frozenset({'data.render_cache_dir', 'collapse_l1_ratio'})

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.loss_config = loss_config_from(config)
    self._model_config = model_config_from(config)
    self.generator = model_lib.generator_from_config(self._model_config['generator'])
    self.discriminator = model_lib.discriminator_from_config(self._model_config['discriminator'])
    size = config.data.image_size
    if size % 2 ** (len(config.model.widths) - 1):
      raise errors.ConfigError(f'config.data.image_size {size} must divide by 2^(number of model.widths - 1) = '
                               f'{2 ** (len(config.model.widths) - 1)}')
    if self.loss_config.pose_pretrain_steps >= config.num_steps:
      raise errors.ConfigError(f'config.loss.pose_pretrain_steps ({self.loss_config.pose_pretrain_steps}) must be '
                               f'below config.num_steps ({config.num_steps}): the whole model trains after it')
    self._vgg_params = losses.vgg16_params(self.loss_config.vgg_layers) if self.loss_config.perceptual > 0 else None
    self._evaluator = None
    self._eval_sets = None
    self._calibration = None
    self._named_readout = None
    self._joints_of = None

  def model_config(self) -> dict[str, Any]:
    return dict(self._model_config)

  def train_dataset(self, *, seed: int, process_index: int, process_count: int):
    data = self.config.data
    render_cache_dir = None
    if data.name == 'puppets' and data.render_cache:
      render_cache_dir = data.render_cache_dir or str(_user_cache_dir() / 'puppet_renders')
    return pose_data.make_train_dataset(data, seed=seed, batch_size=self.config.batch_size,
                                        process_index=process_index, process_count=process_count,
                                        with_joints=self.loss_config.joint_supervision > 0,
                                        with_silhouettes=self.loss_config.foreground > 0,
                                        render_cache_dir=render_cache_dir)

  def init_state(self, key: jax.Array, example_batch) -> dfc_steps.TrainState:
    opt = self.config.optimizer
    pretrain_steps = self.loss_config.pose_pretrain_steps
    # The generator and discriminator schedules run over the steps after the pose pretraining (their optimizers
    # take no step before).
    make_tx = lambda rate: dfc_steps.make_optimizer(  # noqa: E731
        rate, opt.b1, opt.b2, self.config.num_steps - pretrain_steps, opt.decay_start)
    pose_tx = (dfc_steps.make_pose_pretrain_optimizer(opt.learning_rate, pretrain_steps) if pretrain_steps
               else None)
    return dfc_steps.create_train_state(key, self.generator, self.discriminator, make_tx(opt.learning_rate),
                                        make_tx(opt.learning_rate * opt.d_learning_rate_ratio),
                                        image_shape=(1, *example_batch['source'].shape[1:]), pose_tx=pose_tx)

  def train_step(self, state, batch, key):
    # Only the equivariance prior's transforms use the key; the samples' randomness comes from the data pipeline.
    # A render cache's uint8 images become floats here, on the devices (4x fewer bytes to send them).
    batch = pose_data.images_to_float(batch, jnp)
    return dfc_steps.train_step(state, batch, generator=self.generator, discriminator=self.discriminator,
                                config=self.loss_config, vgg_params=self._vgg_params, key=key)

  def train_phases(self):
    """The pose pretraining's steps (loss.pose_pretrain_steps), then train_step."""
    if not self.loss_config.pose_pretrain_steps:
      return ((0, self.train_step),)

    def pretrain_step(state, batch, key):
      metric_shapes = jax.eval_shape(self.train_step, state, batch, key)[1]
      return dfc_steps.pose_pretrain_step(state, pose_data.images_to_float(batch, jnp), key,
                                          generator=self.generator, config=self.loss_config,
                                          metric_shapes=metric_shapes)

    return ((0, pretrain_step), (self.loss_config.pose_pretrain_steps, self.train_step))

  def training_failure(self, history):
    """launch.task.Watched: stops a run whose generator collapsed (generator_collapse)."""
    return generator_collapse(history, ratio=self.config.collapse_l1_ratio,
                              first_step=self.loss_config.pose_pretrain_steps, log_every=self.config.log_every)

  def evaluate(self, state, step: int) -> tuple[dict[str, float], np.ndarray | None]:
    del step
    cfg = self.config.eval
    if self._evaluator is None:
      self._evaluator = dfc_evaluate.Evaluator(self.generator, batch_size=cfg.batch_size)
      self._eval_sets = {split: pose_data.make_eval_set(self.config.data, split, cfg.num_samples)
                         for split in pose_data.eval_splits(self.config.data, cfg.splits)}
      if self.config.data.name == 'puppets':  # only renders have true joints
        if self.loss_config.joint_supervision > 0:
          self._named_readout = named_joints_readout(self.generator, self.config.data)
        else:
          self._calibration = pose_data.make_calibration_set(self.config.data, cfg.calibration_samples)
        self._joints_of = fixed_joint_regressor(self.config.data, cfg.regressor_steps, cfg.regressor_renders)
    g_params = state.params['generator']
    encoder_map = (self._named_readout if self._calibration is None
                   else self._evaluator.encoder_calibration(g_params, self._calibration))
    results, grid = {}, None
    for split, eval_set in self._eval_sets.items():
      rows, output = self._evaluator.evaluate(g_params, eval_set, self._joints_of, encoder_map)
      # The model's metrics, and each trivial row's as '{split}/{row}/{metric}'.
      results.update({f'{split}/{k}': v for k, v in rows.pop('model').items()})
      results.update({f'{split}/{row}/{k}': v for row, values in rows.items() for k, v in values.items()})
      if grid is None:
        grid = dfc_evaluate.image_grid([eval_set['source'], eval_set['target'], output, eval_set['truth']],
                                       cfg.grid_rows)
    return results, grid


def make_task(config: ml_collections.ConfigDict) -> DFCTask:
  return DFCTask(config)
