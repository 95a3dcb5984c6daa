"""A TFDS dataset from any folder of infrared-visible pairs, written as array_record and read without TensorFlow.

`build_dataset(source_dir, name='msrs', data_dir=...)` turns a folder laid out as `<split>/ir/` + `<split>/vi/`
(or just `ir/` + `vi/`, which becomes the 'train' split) into the TFDS dataset `name`, so that MSRS, M3FD, RoadScene
or a user's own pairs become `tfds.data_source(name, split=..., data_dir=...)`.

Features: 'name' (the pair's name), 'ir' (PNG, HxWx1: the infrared image; a colour infrared file is stored as its
luma) and 'vis' (PNG, HxWx3 RGB; a gray visible image is stored with three equal channels, which reads back as
gray). 8-bit by default; 16-bit datasets need `ir_bit_depth=16` / `vis_bit_depth=16` (a 16-bit visible image must
be gray). TFDS decodes 8-bit PNGs with Pillow, but without OpenCV it refuses 16-bit ones, so `PairSource` reads the
encoded bytes (tfds.decode.SkipDecoding) and decodes them with input_pipeline.images, exactly like the folder
pipeline: a pair read from the TFDS dataset equals the same pair read from its folder.
"""
import io
import os
import pathlib
import re

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from input_pipeline import errors
from input_pipeline import images
from input_pipeline import paired_folders

PathLike = str | os.PathLike
_DTYPES = {8: np.uint8, 16: np.uint16}


def find_splits(source_dir: PathLike) -> dict[str, pathlib.Path]:
  """Split name -> folder holding ir/ and vi/: each such subfolder of `source_dir`, or `source_dir` as 'train'."""
  source_dir = pathlib.Path(source_dir)
  if (source_dir / paired_folders.IR_FOLDER).is_dir():
    return {'train': source_dir}
  splits = {p.name: p for p in sorted(source_dir.iterdir()) if (p / paired_folders.IR_FOLDER).is_dir()} \
      if source_dir.is_dir() else {}
  if not splits:
    raise errors.DataConfigError(f'{source_dir}: found neither {paired_folders.IR_FOLDER}/ + '
                                 f'{paired_folders.VIS_FOLDERS[0]}/ nor split folders (e.g. train/, test/) that '
                                 'hold them')
  for split in splits:
    if not re.fullmatch(r'\w+', split):
      raise errors.DataConfigError(f'{source_dir / split}: split folder names may only hold letters, digits and '
                                   'underscores')
  return splits


class PairedFusion(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Paired infrared-visible images from a folder; `make_builder` gives each dataset its own name."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Pairs from <split>/ir + <split>/vi folders.'}
  name = 'paired_fusion'

  def __init__(self, *, source_dir: PathLike, skip_bad: bool = False, ir_bit_depth: int = 8,
               vis_bit_depth: int = 8, **kwargs):
    for what, bits in (('ir_bit_depth', ir_bit_depth), ('vis_bit_depth', vis_bit_depth)):
      if bits not in _DTYPES:
        raise errors.DataConfigError(f'{what} must be 8 or 16, got {bits}')
    self._source_dir = pathlib.Path(source_dir)
    self._splits = find_splits(self._source_dir)
    self._skip_bad = skip_bad
    self._ir_dtype = _DTYPES[ir_bit_depth]
    self._vis_dtype = _DTYPES[vis_bit_depth]
    self.skipped: list[paired_folders.Skipped] = []   # What the last build left out (skip_bad=True).
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    vis_channels = 3 if self._vis_dtype == np.uint8 else 1
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'Infrared-visible pairs from {self._source_dir}.',
        features=tfds.features.FeaturesDict({
            'name': tfds.features.Text(),
            'ir': tfds.features.Image(shape=(None, None, 1), dtype=self._ir_dtype, encoding_format='png'),
            'vis': tfds.features.Image(shape=(None, None, vis_channels), dtype=self._vis_dtype,
                                       encoding_format='png'),
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The data is local.
    generators = {}
    for split, folder in self._splits.items():
      scan = paired_folders.scan_folders(*paired_folders.pair_folders(folder), skip_bad=self._skip_bad,
                                         check=self._check_pair)
      self.skipped.extend(scan.skipped)
      generators[split] = self._generate_examples(scan.pairs)
    return generators

  def _check_pair(self, pair: images.ImagePair) -> None:
    ir, vis = self._ir_image(pair.ir_path), self._vis_image(pair.vis_path)
    paired_folders.pair_size(ir.size[::-1], vis.size[::-1], pair.ir_path, pair.vis_path)

  def _generate_examples(self, pairs):
    # Every pair passed _check_pair in the scan.
    for pair in pairs:
      yield pair.name, {'name': pair.name, 'ir': self._ir_image(pair.ir_path), 'vis': self._vis_image(pair.vis_path)}

  def _ir_image(self, path: pathlib.Path) -> PIL.Image.Image:
    img = images.read_image(path)
    _check_dtype(img, self._ir_dtype, path, 'ir_bit_depth')
    if img.ndim == 3:
      # Luma, rounded back to the file's integer range; three equal channels give back that channel exactly.
      scale = np.iinfo(self._ir_dtype).max
      img = np.round(images.rgb_to_ycrcb(images.to_unit_float(img))[..., 0] * scale).astype(self._ir_dtype)
    return PIL.Image.fromarray(img)

  def _vis_image(self, path: pathlib.Path) -> PIL.Image.Image:
    img = images.read_image(path)
    _check_dtype(img, self._vis_dtype, path, 'vis_bit_depth')
    if self._vis_dtype == np.uint8 and img.ndim == 2:
      img = np.repeat(img[..., None], 3, axis=-1)
    return PIL.Image.fromarray(img)


def _check_dtype(img: np.ndarray, dtype, path: pathlib.Path, option: str) -> None:
  if img.dtype != dtype:
    bits = img.dtype.itemsize * 8
    raise images.PairError(f'{path}: {bits}-bit image in a dataset built with {option}={np.iinfo(dtype).bits} '
                     f'(rebuild with {option}={bits}, or skip_bad=True to leave it out)')


def make_builder(source_dir: PathLike, *, name: str, data_dir: PathLike, skip_bad: bool = False,
                 ir_bit_depth: int = 8, vis_bit_depth: int = 8) -> PairedFusion:
  """A PairedFusion builder named `name` (lower_snake_case) that writes array_record files under `data_dir`."""
  if not re.fullmatch(r'[a-z][a-z0-9_]*', name):
    raise errors.DataConfigError(f'dataset name {name!r} must be lower_snake_case (letters, digits, underscores)')
  # A fresh subclass per name: TFDS takes the dataset name (and so its folder) from the class.
  builder_class = type(f'PairedFusion_{name}', (PairedFusion,), {'name': name, '__module__': __name__},
                       skip_registration=True)
  return builder_class(source_dir=source_dir, skip_bad=skip_bad, ir_bit_depth=ir_bit_depth,
                       vis_bit_depth=vis_bit_depth, data_dir=os.fspath(data_dir), file_format='array_record')


def build_dataset(source_dir: PathLike, *, name: str, data_dir: PathLike, skip_bad: bool = False,
                  ir_bit_depth: int = 8, vis_bit_depth: int = 8) -> PairedFusion:
  """Builds (or reuses, when already built) the TFDS dataset `name` from `source_dir`; returns its builder.

  `builder.skipped` lists what skip_bad=True left out; `builder.info.splits` the splits and their sizes.
  """
  # A '~' that the shell left alone (--data_dir=~/x) would otherwise become a folder named '~'.
  source_dir, data_dir = os.path.expanduser(source_dir), os.path.expanduser(data_dir)
  builder = make_builder(source_dir, name=name, data_dir=data_dir, skip_bad=skip_bad, ir_bit_depth=ir_bit_depth,
                         vis_bit_depth=vis_bit_depth)
  builder.download_and_prepare()
  return builder


class PairSource:
  """Random access to one split of a built dataset as {'name', 'ir', 'vis'} (float32 HxW in [0, 1], VIS = Y)."""

  def __init__(self, name: str, split: str, data_dir: PathLike):
    self._where = f'TFDS dataset {name!r} split {split!r} in {data_dir}'
    skip = tfds.decode.SkipDecoding()
    self._source = tfds.data_source(name, split=split, data_dir=os.path.expanduser(data_dir),
                                    decoders={'ir': skip, 'vis': skip})

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, np.ndarray | str]:
    record = self._source[index]
    name = record['name'].decode() if isinstance(record['name'], bytes) else str(record['name'])
    try:
      ir = images.load_ir(io.BytesIO(record['ir']))
      vis, _ = images.load_vis(io.BytesIO(record['vis']))
    except images.ImageReadError as e:
      raise images.ImageReadError(f'{self._where}, pair {name!r} (index {index}): {e}') from e
    where = f'of pair {name!r} (index {index}) of {self._where}'
    paired_folders.pair_size(ir.shape, vis.shape, where, where)
    return {'name': name, 'ir': ir, 'vis': vis}

  def __repr__(self) -> str:
    return f'PairSource({self._where})'
