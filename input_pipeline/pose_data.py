"""grain pipelines for DFC-Net: infinite paired + support training batches and fixed evaluation sets.

Two datasets (data_config.name):
  puppets: the procedural renderer; truth is the target's character in the source's pose; support samples come from
    the disjoint support split; test splits unseen characters and unseen animations, with true joints and
    silhouettes.
  frames: one person's video frames (EDN-style, data_config.frames_dir); source = truth = frame i, target = frame j;
    support samples pair another person's frame (data_config.support_frames_dir) as pose with this person's frame
    as appearance; the test split 'test_frames' is data_config.test_frames_dir, or else the video's last
    holdout_fraction of frames, which training then leaves out.

Images are float32 in [0, 1], NHWC. A training element holds a paired sample (source = pose, target = appearance,
truth = the target's person in the source's pose) and, when support data is on, an unpaired one (support_source,
support_target).
"""
from typing import Any

import grain
import ml_collections
import numpy as np
import tqdm

from input_pipeline import errors
from input_pipeline import puppet_cache
from input_pipeline import puppets
from input_pipeline import video_frames

# Samples are addressed by index; this many per process is infinite for any training run.
_STREAM_LENGTH = 2**40
TRAIN_KEYS = ('source', 'target', 'truth')
# The renderer's joints of a paired puppet sample, for joint supervision (make_train_dataset's with_joints).
JOINT_KEYS = ('source_joints', 'target_joints', 'truth_joints')
# The renderer's silhouettes of a paired puppet sample, for the foreground loss (make_train_dataset's
# with_silhouettes).
SILHOUETTE_KEYS = ('truth_silhouette', 'target_silhouette')
SUPPORT_KEYS = ('support_source', 'support_target')
DATASETS = ('puppets', 'frames')
FRAMES_TEST_SPLIT = 'test_frames'
# The video-frames fields of a data config (ignored by puppets), with their defaults.
FRAMES_DEFAULTS = {'frames_dir': None, 'test_frames_dir': None, 'support_frames_dir': None, 'crop': 'center',
                   'holdout_fraction': 0.1, 'cache_frames': True}


def make_world(data_config: ml_collections.ConfigDict) -> puppets.PuppetWorld:
  """The puppet world (characters and animations of every split) a data config describes."""
  return puppets.PuppetWorld(
      seed=data_config.world_seed,
      num_train_characters=data_config.num_train_characters,
      num_test_characters=data_config.num_test_characters,
      num_support_characters=data_config.num_support_characters,
      num_train_animations=data_config.num_train_animations,
      num_test_animations=data_config.num_test_animations,
      num_support_animations=data_config.num_support_animations,
      frames_per_animation=data_config.frames_per_animation)


class _TrainSample:
  """Index -> one training element (PuppetSamplers), or indices [b] -> one training batch (CachedPuppetSamplers);
  a picklable callable so that grain worker processes can run it."""

  def __init__(self, paired, support, with_joints: bool, with_silhouettes: bool = False):
    self.paired, self.support = paired, support
    self.keys = TRAIN_KEYS + (JOINT_KEYS if with_joints else ()) + (SILHOUETTE_KEYS if with_silhouettes else ())

  def __call__(self, index) -> dict[str, np.ndarray]:
    sample = self.paired.paired(index)
    element = {k: sample[k] for k in self.keys}
    if self.support is not None:
      unpaired = self.support.unpaired(index)
      element['support_source'] = unpaired['source']
      element['support_target'] = unpaired['target']
    return element


def _puppet_samplers(data_config: ml_collections.ConfigDict, seed: int, batch_size: int,
                     render_cache_dir: str | None):
  """The train split's sampler and the support split's (None without support data): rendering, or reading the
  render caches under render_cache_dir. Sample i of the stream is in step i // batch_size's batch."""
  world, size = make_world(data_config), data_config.image_size
  limb_mixing = data_config.limb_mixing
  if limb_mixing and render_cache_dir is not None:
    raise errors.DataConfigError(f'config.data.limb_mixing={limb_mixing} draws poses that no cached render holds; '
                                 'set --config.data.render_cache=False or --config.data.limb_mixing=0')

  mixing_steps = data_config.limb_mixing_steps
  if mixing_steps < 0:
    raise errors.DataConfigError(f'config.data.limb_mixing_steps={mixing_steps} must be >= 0 (0: limb mixing at '
                                 'every step)')
  mixing_samples = mixing_steps * batch_size if mixing_steps else None

  def sampler(split):
    if render_cache_dir is None:
      return puppets.PuppetSampler(world, split, size, sample_seed=seed,
                                   limb_mixing=limb_mixing if split == 'train' else 0.0,
                                   limb_mixing_samples=mixing_samples)
    directory = puppet_cache.ensure(world, split, size, render_cache_dir)
    return puppet_cache.CachedPuppetSampler(world, split, size, directory, sample_seed=seed)
  return sampler('train'), sampler('support') if data_config.support else None


def frame_splits(data_config: ml_collections.ConfigDict) -> tuple[list, list]:
  """(train, test) frame paths of a 'frames' data config."""
  if not data_config.frames_dir:
    raise errors.DataConfigError("data.frames_dir is not set: training on video frames needs the folder of one "
                                 "person's frames (--config.data.frames_dir=DIR)")
  frames = video_frames.list_frames(data_config.frames_dir)
  if data_config.test_frames_dir:
    return frames, video_frames.list_frames(data_config.test_frames_dir)
  return video_frames.split_frames(frames, data_config.holdout_fraction, data_config.frames_dir)


def _support_frames(data_config: ml_collections.ConfigDict) -> list | None:
  if not data_config.support:
    return None
  if not data_config.support_frames_dir:
    raise errors.DataConfigError('data.support is on but data.support_frames_dir is not set: give a folder of '
                                 'frames of other people (--config.data.support_frames_dir=DIR) or turn support '
                                 'data off (--config.data.support=False)')
  return video_frames.list_frames(data_config.support_frames_dir)


def eval_splits(data_config: ml_collections.ConfigDict, puppet_splits) -> tuple[str, ...]:
  """The evaluation splits of a data config: `puppet_splits` for puppets, ('test_frames',) for video frames."""
  return tuple(puppet_splits) if data_config.name == 'puppets' else (FRAMES_TEST_SPLIT,)


def make_train_dataset(data_config: ml_collections.ConfigDict, *, seed: int, batch_size: int,
                       process_index: int = 0, process_count: int = 1, with_joints: bool = False,
                       with_silhouettes: bool = False, render_cache_dir: str | None = None) -> grain.IterDataset:
  """Infinite training batches of this process: {'source','target','truth'[,'support_*']} [b,S,S,3], with
  with_joints (puppets only) the renderer's JOINT_KEYS [b,J,2] in pixels, and with with_silhouettes (puppets
  rendered on the fly) its SILHOUETTE_KEYS [b,S,S] bool.

  render_cache_dir (puppets): read the train and support renders from a cache under this directory
  (input_pipeline.puppet_cache, built on first use) instead of rendering every sample; the images are then uint8
  (255 x, to be divided by 255 where the batch is used: images_to_float).

  b = batch_size // process_count; process p reads samples p, p + P, p + 2P, ... so processes never overlap. The
  iterator is checkpointable (grain.checkpoint.CheckpointSave).
  """
  if batch_size % process_count:
    raise ValueError(f'batch_size {batch_size} must divide by the process count {process_count}')
  if with_joints and data_config.name != 'puppets':
    raise errors.DataConfigError(f'joint supervision (loss.joint_supervision > 0) needs true joints, which only '
                                 f"the puppet renders have; data.name is {data_config.name!r}: set "
                                 f'--config.loss.joint_supervision=0')
  if with_silhouettes and (data_config.name != 'puppets' or render_cache_dir is not None):
    raise errors.DataConfigError(
        'the foreground loss (loss.foreground > 0) needs the renderer\'s silhouettes, which only puppets rendered '
        f'on the fly have (data.name is {data_config.name!r}, data.render_cache {render_cache_dir is not None}): '
        'set --config.loss.foreground=0' + (' or --config.data.render_cache=False' if render_cache_dir else ''))
  local_batch = batch_size // process_count
  samples = grain.MapDataset.range(_STREAM_LENGTH)[process_index::process_count]
  read_options = grain.ReadOptions(num_threads=max(1, data_config.workers), prefetch_buffer_size=4)
  if data_config.name == 'puppets':
    samplers = _puppet_samplers(data_config, seed, batch_size, render_cache_dir)
    sample = _TrainSample(*samplers, with_joints, with_silhouettes)
    if render_cache_dir is not None:
      # A cache reads whole batches: one gather per image key instead of a copy per sample and a stack.
      return samples.batch(local_batch, drop_remainder=True).map(sample).to_iter_dataset(read_options)
  elif data_config.name == 'frames':
    sample = video_frames.FrameTrainSample(frame_splits(data_config)[0], data_config.image_size,
                                           crop=video_frames.parse_crop(data_config.crop), seed=seed,
                                           support_frames=_support_frames(data_config),
                                           cache=data_config.cache_frames)
  else:
    raise errors.DataConfigError(f'DFC training data {data_config.name!r} is not supported; use one of '
                                 f'{DATASETS}')
  return samples.map(sample).batch(local_batch, drop_remainder=True).to_iter_dataset(read_options)


def images_to_float(batch, xp=np):
  """The batch with its uint8 images (a render cache's) as float32 in [0, 1]; xp: numpy or jax.numpy."""
  return {k: v.astype(xp.float32) / 255 if v.dtype == np.uint8 else v for k, v in batch.items()}


def make_eval_set(data_config: ml_collections.ConfigDict, split: str, num_samples: int,
                  sample_seed: int = 0) -> dict[str, np.ndarray]:
  """`num_samples` paired samples of a test split, stacked: images [N,S,S,3] (source, target, truth); for puppets
  also truth_joints [N,J,2], truth_silhouette [N,S,S] bool, truth_background [N,S,S,3], source_joints [N,J,2],
  target_silhouette [N,S,S] bool.
  Video frames give every distinct pair of held-out frames when they have fewer than `num_samples`."""
  if data_config.name == 'frames':
    if split != FRAMES_TEST_SPLIT:
      raise errors.DataConfigError(f'unknown split {split!r} of video frames; the test split is '
                                   f'{FRAMES_TEST_SPLIT!r}')
    test = frame_splits(data_config)[1]
    return video_frames.load_pairs(test, video_frames.frame_pairs(len(test), num_samples, sample_seed),
                                   data_config.image_size, video_frames.parse_crop(data_config.crop))
  sampler = puppets.PuppetSampler(make_world(data_config), split, data_config.image_size, sample_seed=sample_seed)
  samples = [sampler.paired(i) for i in tqdm.trange(num_samples, desc=f'render {split}', leave=False)]
  return {k: np.stack([s[k] for s in samples]) for k in samples[0]}


def make_calibration_set(data_config: ml_collections.ConfigDict, num_samples: int, sample_seed: int = 1,
                         with_truths: bool = False) -> dict[str, Any]:
  """Renders of the train split with their true joints: the sources of num_samples pairs (and with_truths, their
  truths after them), to map learned keypoints to joints or to train a joint regressor."""
  sampler = puppets.PuppetSampler(make_world(data_config), 'train', data_config.image_size, sample_seed=sample_seed)
  samples = [sampler.paired(i) for i in range(num_samples)]
  kinds = (('source', 'source_joints'), ('truth', 'truth_joints')) if with_truths else (('source', 'source_joints'),)
  return {'images': np.stack([s[image] for image, _ in kinds for s in samples]),
          'joints': np.stack([s[joints] for _, joints in kinds for s in samples])}
