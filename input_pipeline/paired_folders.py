"""Pairs of infrared-visible image files: the one path by which training, the TFDS builder, launch.fuse and
launch.evaluate_cfi pair two folders, check a pair's sizes and leave out bad pairs.

- `list_pairs`: the pairs of two folders (same stem, or IR<n> with VIS<n>: input_pipeline.images.match_pairs); a
  file without a partner is an error, or with skip_bad a skipped entry.
- `pair_size`: the one size check of a pair: the images must be the same size (the error names both files and the
  fix) unless the caller resizes one, and the size must be one the consumer takes.
- `each_good_pair`: the one skip-bad loop: a bad pair (PairError, ImageReadError) stops the run, or with skip_bad is
  logged, recorded as (name, reason) and left out.
- `scan_folders`: what a training run or a dataset build does before it starts: every pair read once, problems
  reported together in one error, or (skip_bad=True) left out and reported.
"""
import os
import pathlib
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple, TypeVar

from absl import logging
import numpy as np
import tqdm

from input_pipeline import errors
from input_pipeline import images

PathLike = str | os.PathLike
IR_FOLDER = 'ir'
VIS_FOLDERS = ('vi', 'vis')
T = TypeVar('T')
# What a bad pair or file left out: (pair name, or file without a partner; what is wrong with it).
Skipped = tuple[str, str]


class FolderScan(NamedTuple):
  pairs: list[images.ImagePair]   # Good pairs, in natural order.
  skipped: list[Skipped]          # Left-out pairs and files.


def pair_folders(directory: PathLike) -> tuple[pathlib.Path, pathlib.Path]:
  """The (ir, visible) folders inside `directory`: `ir/` and `vi/` (or `vis/`)."""
  directory = pathlib.Path(directory)
  ir_dir = directory / IR_FOLDER
  vis_dirs = [directory / name for name in VIS_FOLDERS if (directory / name).is_dir()]
  if not ir_dir.is_dir() or not vis_dirs:
    raise errors.DataConfigError(f'{directory}: expected subfolders {IR_FOLDER}/ and {VIS_FOLDERS[0]}/ (or '
                                 f'{VIS_FOLDERS[1]}/) holding the infrared and visible images of each pair (same '
                                 'file stem, or IR<n>/VIS<n>)')
  if len(vis_dirs) > 1:
    raise errors.DataConfigError(f'{directory}: both {VIS_FOLDERS[0]}/ and {VIS_FOLDERS[1]}/ exist; keep one visible '
                                 'folder')
  return ir_dir, vis_dirs[0]


def split_folder(data_dir: PathLike, split: str) -> pathlib.Path:
  """Folder of `split` in a dataset root: `data_dir/<split>/` if it holds pairs, else `data_dir` itself for 'train'."""
  data_dir = pathlib.Path(data_dir).expanduser()
  if (data_dir / split / IR_FOLDER).is_dir():
    return data_dir / split
  if split == 'train' and (data_dir / IR_FOLDER).is_dir():
    return data_dir
  raise errors.DataConfigError(f'{data_dir}: no {split!r} split; expected {data_dir / split}/{IR_FOLDER}/ and '
                   f'{VIS_FOLDERS[0]}/' + (f' (or {IR_FOLDER}/ and {VIS_FOLDERS[0]}/ directly in it)'
                                           if split == 'train' else ''))


def list_pairs(ir_dir: PathLike, vis_dir: PathLike, *, skip_bad: bool) -> tuple[list[images.ImagePair],
                                                                                 list[Skipped]]:
  """(pairs, skipped): the pairs of two folders in natural order; files without a partner are a DataConfigError
  listing them all, unless skip_bad returns each as skipped (file, reason)."""
  if skip_bad:
    return images.match_pairs(ir_dir, vis_dir)
  return images.find_pairs(ir_dir, vis_dir), []


def pair_size(ir_shape: tuple[int, ...], vis_shape: tuple[int, ...], ir: PathLike, vis: PathLike, *,
              resize_to: str | None = None, fix: str = images.ALIGN_PAIRS,
              check_size: Callable[[int, int, str], None] | None = None) -> tuple[int, int]:
  """The (height, width) that both images of a pair take: their common size, or when they differ and resize_to
  names one of them ('ir' | 'vis'), that one's.

  Args:
    ir_shape, vis_shape: the images' shapes (H, W, ...).
    ir, vis: what to name them by in errors (their files).
    resize_to: None (sizes must agree), 'ir' or 'vis' (the caller resizes the other image to this one's size).
    fix: what the size-mismatch error tells the user to do.
    check_size: (height, width, what) -> None, raising ValueError for a size the consumer cannot take (e.g.
      cfi_jax.bucketed.check_size: the network's minimum).

  Raises:
    PairError: the sizes differ and resize_to is None (images.size_mismatch: both files, both sizes, `fix`), or
      check_size refuses the size.
  """
  if ir_shape[:2] != vis_shape[:2] and resize_to is None:
    raise images.size_mismatch(ir, ir_shape, vis, vis_shape, fix)
  size = tuple(vis_shape[:2] if resize_to == 'vis' else ir_shape[:2])
  if check_size is not None:
    try:
      check_size(*size, f'{ir} / {vis}')
    except ValueError as e:
      raise images.PairError(str(e)) from e
  return size


def each_good_pair(pairs: Sequence[images.ImagePair], work: Callable[[images.ImagePair], T], *, skip_bad: bool,
                   skipped: list[Skipped], desc: str, progress: bool = True, warn: bool = True
                   ) -> Iterator[tuple[images.ImagePair, T]]:
  """(pair, work(pair)) for every pair, with a progress bar. A bad pair (work raises PairError or ImageReadError)
  stops the run, or with skip_bad is appended to `skipped` as (name, reason), logged unless `warn` is False, and
  left out."""
  for pair in tqdm.tqdm(pairs, desc=desc, unit='pair', disable=not progress, leave=False):
    try:
      result = work(pair)
    except (images.PairError, images.ImageReadError) as e:
      if not skip_bad:
        raise
      if warn:
        logging.warning('Skipping pair %s: %s', pair.name, e)
      skipped.append((pair.name, str(e)))
      continue
    yield pair, result


def check_pair(pair: images.ImagePair) -> None:
  """Reads both images of a pair; raises ImageReadError or PairError (a size mismatch) when it cannot be used."""
  pair_size(images.read_image(pair.ir_path).shape, images.read_image(pair.vis_path).shape, pair.ir_path,
            pair.vis_path)


def scan_folders(ir_dir: PathLike, vis_dir: PathLike, *, skip_bad: bool = False, progress: bool = True,
                 check: Callable[[images.ImagePair], None] = check_pair) -> FolderScan:
  """Pairs the two folders and checks every pair once, so that a bad file is found before training starts.

  Args:
    ir_dir, vis_dir: the infrared and visible folders.
    skip_bad: leave out unpaired files and bad pairs (logged and returned in `skipped`) instead of raising.
    progress: show a progress bar while reading.
    check: pair -> None, raising PairError or ImageReadError for a pair that cannot be used (by default: unreadable
      files and sizes that differ).

  Raises:
    DataConfigError: without skip_bad, listing every problem found; also when no usable pair is left.
  """
  ir_dir, vis_dir = pathlib.Path(ir_dir).expanduser(), pathlib.Path(vis_dir).expanduser()
  pairs, skipped = list_pairs(ir_dir, vis_dir, skip_bad=skip_bad)
  problems: list[Skipped] = []
  # Every pair is checked before deciding, so that without skip_bad one error lists all the bad pairs.
  good = [pair for pair, _ in each_good_pair(pairs, check, skip_bad=True, skipped=problems,
                                              desc=f'checking pairs in {ir_dir.parent}', progress=progress,
                                              warn=False)]
  if problems and not skip_bad:
    raise errors.DataConfigError(f'{len(problems)} bad pair(s) in {ir_dir} / {vis_dir} (data.skip_bad=True leaves '
                                 'them out): ' + '; '.join(reason for _, reason in problems))
  skipped += problems
  if skipped:
    logging.warning('Skipped %d file(s)/pair(s) in %s / %s:\n  %s', len(skipped), ir_dir, vis_dir,
                    '\n  '.join(f'{name}: {reason}' for name, reason in skipped))
  if not good:
    raise errors.DataConfigError(f'no usable pairs in {ir_dir} / {vis_dir}' +
                                 (f' ({len(skipped)} skipped)' if skipped else ''))
  return FolderScan(good, skipped)


def load_pair(pair: images.ImagePair) -> dict[str, np.ndarray | str]:
  """{'name', 'ir', 'vis'}: infrared and visible Y as float32 HxW in [0, 1] (the network's inputs)."""
  ir = images.load_ir(pair.ir_path)
  vis, _ = images.load_vis(pair.vis_path)
  pair_size(ir.shape, vis.shape, pair.ir_path, pair.vis_path)
  return {'name': pair.name, 'ir': ir, 'vis': vis}
