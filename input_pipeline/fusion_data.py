"""grain pipelines for infrared-visible fusion: training batches and full-size evaluation pairs.

Three sources share one pipeline: 'synthetic' (scenes from input_pipeline.synthetic_fusion, no download), 'folder'
(ir/ + vi/ folders of pairs) and 'tfds' (a dataset built by input_pipeline.tfds_fusion). A training element is
{'vis', 'ir'}: float32 [b, crop, crop, 1] in [0, 1], the visible image's Y and the infrared image.

Training pipeline (per process): this process's shard of the pairs (every process_count-th pair from
process_index) -> shuffle -> repeat forever (reshuffled every epoch) -> load -> shared random crop, flips and
transpose -> batch. Batching happens before grain's prefetching, so the batch sequence depends only on the seed and
the shard: not on the number of threads or worker processes, and the iterator's state (get_state / set_state,
grain.checkpoint.CheckpointSave) resumes it exactly.

Images smaller than the crop are upscaled (bilinear, both modalities by the same factor, aspect ratio kept) until
the shorter side equals the crop size: padding would make the network learn to fuse artificial borders.
"""
from typing import Any

import grain
import ml_collections
import numpy as np

from input_pipeline import errors
from input_pipeline import images
from input_pipeline import paired_folders
from input_pipeline import synthetic_fusion
from input_pipeline import tfds_fusion

Pair = dict[str, Any]   # {'name': str, 'ir': float32 HxW, 'vis': float32 HxW (Y)} in [0, 1].
SOURCES = ('synthetic', 'folder', 'tfds')
# Scene seeds are (synthetic_seed, stream, index): training and evaluation scenes never coincide.
_TRAIN_STREAM, _EVAL_STREAM = 0, 1


def default_data_config() -> ml_collections.ConfigDict:
  """Every field the pipelines read, with defaults (the training configs put this under `config.data`)."""
  return ml_collections.ConfigDict({
      'name': 'synthetic',        # 'synthetic' | 'folder' | 'tfds'.
      'crop_size': 256,           # Square training crops (the release: 256).
      'threads': 2,               # Loader threads per process.
      'workers': 0,               # grain worker processes per process (0: load in the threads only).
      'num_eval': 8,              # Evaluation pairs: synthetic scenes to make; at most this many otherwise (0: all).
      # 'synthetic'
      'num_synthetic': 1024,      # Training scenes.
      'synthetic_size': 320,      # Scene height and width (training and evaluation).
      'synthetic_seed': 0,        # Which scenes; the training seed only orders and augments them.
      # 'folder': data_dir/<train_split>/{ir,vi}/ (or data_dir/{ir,vi}/) and data_dir/<eval_split>/{ir,vi}/, or
      # explicit folders.
      'data_dir': '',
      'ir_dir': '',
      'vis_dir': '',
      'eval_ir_dir': '',
      'eval_vis_dir': '',
      'skip_bad': False,          # Leave out (and report) unpaired, unreadable and mismatched files instead of failing.
      # Keep every training pair once decoded and upscaled to the crop (per process, float32), so each later epoch
      # only crops: for small datasets (RoadScene's 180 pairs: ~0.3 GB), where decoding two files per sample would
      # starve an accelerator.
      'cache_decoded': False,
      # 'tfds': a dataset built with input_pipeline.tfds_fusion.build_dataset.
      'tfds_name': '',
      'tfds_data_dir': '',
      # 'folder' and 'tfds'
      'train_split': 'train',
      'eval_split': 'test',
  })


class SyntheticPairs:
  """Random access to synthetic scenes: {'name', 'ir', 'vis' (Y)}; scene i is generated on demand."""

  def __init__(self, num_scenes: int, size: int, seed: int, stream: int = _TRAIN_STREAM):
    if num_scenes < 1:
      raise errors.DataConfigError(f'need at least one synthetic scene, got num_scenes={num_scenes}')
    self._num_scenes, self._size, self._seed, self._stream = num_scenes, size, seed, stream

  def __len__(self) -> int:
    return self._num_scenes

  def __getitem__(self, index: int) -> Pair:
    index = int(index) % self._num_scenes
    pair = synthetic_fusion.generate_pair((self._seed, self._stream, index), self._size, self._size)
    return {'name': f'synthetic_{self._seed}_{self._stream}_{index:06d}', 'ir': pair.ir,
            'vis': images.rgb_to_ycrcb(pair.vis)[..., 0]}

  def warm(self, index: int) -> np.ndarray:
    """Scene `index`'s warm-object coverage (HxW in [0, 1]), for checking that a fusion keeps them bright."""
    index = int(index) % self._num_scenes
    return synthetic_fusion.generate_pair((self._seed, self._stream, index), self._size, self._size).warm

  def __repr__(self) -> str:
    return f'SyntheticPairs(num_scenes={self._num_scenes}, size={self._size}, seed={self._seed})'


class FolderPairs:
  """Random access to checked folder pairs: {'name', 'ir', 'vis' (Y)}; `skipped` lists what was left out."""

  def __init__(self, ir_dir, vis_dir, *, skip_bad: bool = False):
    self.pairs, self.skipped = paired_folders.scan_folders(ir_dir, vis_dir, skip_bad=skip_bad)

  def __len__(self) -> int:
    return len(self.pairs)

  def __getitem__(self, index: int) -> Pair:
    return paired_folders.load_pair(self.pairs[int(index) % len(self.pairs)])


class DecodedCache:
  """Random access to `source` that decodes each pair once, upscales it to the crop (`fit_to_crop`) and then serves
  it from memory (thread-safe: a race only decodes a pair twice)."""

  def __init__(self, source, crop_size: int):
    self._source = source
    self._crop_size = crop_size
    self._pairs = {}

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> Pair:
    index = int(index) % len(self._source)
    if index not in self._pairs:
      pair = self._source[index]
      ir, vis = fit_to_crop(pair['ir'], pair['vis'], self._crop_size)
      self._pairs[index] = {**pair, 'ir': ir, 'vis': vis}
    return self._pairs[index]

  def __repr__(self) -> str:
    return f'DecodedCache({self._source!r}, crop_size={self._crop_size})'


def _folder_dirs(config: ml_collections.ConfigDict, *, train: bool) -> tuple[str, str]:
  ir_dir, vis_dir = (config.ir_dir, config.vis_dir) if train else (config.eval_ir_dir, config.eval_vis_dir)
  if ir_dir or vis_dir:
    if not (ir_dir and vis_dir):
      prefix = '' if train else 'eval_'
      raise errors.DataConfigError(f'set both data.{prefix}ir_dir and data.{prefix}vis_dir (got {ir_dir!r} and '
                                   f'{vis_dir!r})')
    return ir_dir, vis_dir
  if not config.data_dir:
    prefix = '' if train else 'eval_'
    raise errors.DataConfigError("data.name='folder' needs a folder of pairs: pass --config.data.data_dir=DIR (holding "
                                 '<split>/ir/ + <split>/vi/, or ir/ + vi/), or data.{0}ir_dir and '
                                 'data.{0}vis_dir'.format(prefix))
  split = config.train_split if train else config.eval_split
  return tuple(map(str, paired_folders.pair_folders(paired_folders.split_folder(config.data_dir, split))))


def make_source(config: ml_collections.ConfigDict, *, train: bool):
  """The random-access pairs of the training or evaluation split that `config` (a data config) describes."""
  if config.name == 'synthetic':
    if train:
      return SyntheticPairs(config.num_synthetic, config.synthetic_size, config.synthetic_seed, _TRAIN_STREAM)
    if config.num_eval < 1:
      raise errors.DataConfigError(f'data.num_eval={config.num_eval}: synthetic evaluation needs a positive number '
                                   'of scenes')
    return SyntheticPairs(config.num_eval, config.synthetic_size, config.synthetic_seed, _EVAL_STREAM)
  if config.name == 'folder':
    return FolderPairs(*_folder_dirs(config, train=train), skip_bad=config.skip_bad)
  if config.name == 'tfds':
    if not config.tfds_name or not config.tfds_data_dir:
      raise errors.DataConfigError("data.name='tfds' needs data.tfds_name and data.tfds_data_dir (see "
                       'input_pipeline.tfds_fusion.build_dataset)')
    return tfds_fusion.PairSource(config.tfds_name, config.train_split if train else config.eval_split,
                                  config.tfds_data_dir)
  raise errors.DataConfigError(f'unknown data.name {config.name!r}; expected one of {", ".join(SOURCES)}')


def fit_to_crop(ir: np.ndarray, vis: np.ndarray, crop_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Upscales both images (same factor, aspect kept) so the shorter side is at least `crop_size`."""
  h, w = ir.shape
  if min(h, w) >= crop_size:
    return ir, vis
  scale = crop_size / min(h, w)
  size = (max(crop_size, round(h * scale)), max(crop_size, round(w * scale)))
  return images.resize_image(ir, size), images.resize_image(vis, size)


class RandomCropFlip(grain.transforms.RandomMap):
  """One random crop offset, horizontal flip, vertical flip and transpose (each p=0.5) for both images of a pair."""

  def __init__(self, crop_size: int):
    self.crop_size = crop_size

  def random_map(self, element: Pair, rng: np.random.Generator) -> dict[str, np.ndarray]:
    ir, vis = fit_to_crop(element['ir'], element['vis'], self.crop_size)
    h, w = ir.shape
    top = int(rng.integers(0, h - self.crop_size + 1))
    left = int(rng.integers(0, w - self.crop_size + 1))
    flip_h, flip_v, transpose = rng.random(3) < 0.5
    out = {}
    for key, img in (('vis', vis), ('ir', ir)):
      img = img[top:top + self.crop_size, left:left + self.crop_size]
      if flip_h:
        img = img[:, ::-1]
      if flip_v:
        img = img[::-1, :]
      if transpose:
        img = img.T
      out[key] = np.ascontiguousarray(img, dtype=np.float32)[..., None]
    return out


def _drop_name(element: Pair) -> Pair:
  return {'ir': element['ir'], 'vis': element['vis']}


def _shard_seed(seed: int, process_index: int) -> int:
  """Per-process pipeline seed (32-bit): processes draw different augmentations and shuffles."""
  return int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0])


def make_train_dataset(data_config: ml_collections.ConfigDict, *, seed: int, batch_size: int,
                       process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """Infinite batches of this process's shard: {'vis', 'ir'} float32 [batch_size // process_count, c, c, 1].

  Deterministic given (data_config, seed, process_index, process_count); processes read disjoint pairs.
  """
  if batch_size % process_count:
    raise errors.DataConfigError(f'batch_size {batch_size} is not divisible by the process count {process_count}')
  if not 0 <= process_index < process_count:
    raise errors.DataConfigError(f'process_index {process_index} is outside [0, {process_count})')
  source = make_source(data_config, train=True)
  if data_config.cache_decoded:
    source = DecodedCache(source, data_config.crop_size)
  if len(source) < process_count:
    raise errors.DataConfigError(f'{len(source)} training pair(s) cannot be shared by {process_count} processes')
  per_process = batch_size // process_count
  ds = (grain.MapDataset.source(source)[process_index::process_count]
        .seed(_shard_seed(seed, process_index))
        .shuffle()
        .repeat()
        .map(_drop_name)
        .random_map(RandomCropFlip(data_config.crop_size))
        .batch(per_process, drop_remainder=True))
  threads = max(int(data_config.threads), 0)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(2 * threads, 1)))
  if data_config.workers > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=int(data_config.workers)))
  return ds


def make_eval_pairs(data_config: ml_collections.ConfigDict) -> list[Pair]:
  """Full-size held-out pairs {'name', 'vis', 'ir'} (float32 HxW in [0, 1]), in a fixed order.

  synthetic: `num_eval` scenes from a seed stream that training never uses; folder/tfds: the `eval_split` (or the
  eval_ir_dir / eval_vis_dir folders), at most `num_eval` pairs when it is positive.
  """
  source = make_source(data_config, train=False)
  count = len(source) if data_config.num_eval <= 0 else min(len(source), data_config.num_eval)
  return [{'name': p['name'], 'vis': p['vis'], 'ir': p['ir']} for p in (source[i] for i in range(count))]
