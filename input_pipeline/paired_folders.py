"""Folders of infrared-visible pairs: locating the ir/ and vi/ folders, checking every pair, loading a pair.

Pairing (same stem, or IR<n> with VIS<n>) and image reading are input_pipeline.images'. This module adds the checks
a training run needs before it starts: every file has a partner, both images decode, and the two images of a pair
have the same size. Problems are either reported together in one error, or (skip_bad=True) left out and reported.
"""
import os
import pathlib
from typing import NamedTuple

from absl import logging
import numpy as np
import tqdm

from input_pipeline import errors
from input_pipeline import images

PathLike = str | os.PathLike
IR_FOLDER = 'ir'
VIS_FOLDERS = ('vi', 'vis')


class FolderScan(NamedTuple):
  pairs: list[images.ImagePair]   # Good pairs, in natural order.
  skipped: list[str]              # One line per left-out pair or file: '<file(s)>: <problem>'.


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


def check_pair(pair: images.ImagePair) -> str | None:
  """Reads both images of a pair; returns the problem ('<files>: <what>') or None when the pair is usable."""
  try:
    ir = images.read_image(pair.ir_path)
    vis = images.read_image(pair.vis_path)
  except images.ImageReadError as e:
    return str(e)
  if ir.shape[:2] != vis.shape[:2]:
    return str(images.size_mismatch(pair.ir_path, ir.shape, pair.vis_path, vis.shape))
  return None


def scan_folders(ir_dir: PathLike, vis_dir: PathLike, *, skip_bad: bool = False,
                 progress: bool = True) -> FolderScan:
  """Pairs the two folders and reads every pair once, so that a bad file is found before training starts.

  Args:
    ir_dir, vis_dir: the infrared and visible folders.
    skip_bad: leave out unpaired files, unreadable files and pairs of different sizes (logged and returned in
      `skipped`) instead of raising.
    progress: show a progress bar while reading.

  Raises:
    DataConfigError: without skip_bad, listing every problem found; also when no usable pair is left.
  """
  ir_dir, vis_dir = pathlib.Path(ir_dir).expanduser(), pathlib.Path(vis_dir).expanduser()
  pairs, skipped = images.pair_files(ir_dir, vis_dir, skip_unpaired=skip_bad)
  good, problems = [], []
  for pair in tqdm.tqdm(pairs, desc=f'checking pairs in {ir_dir.parent}', unit='pair', disable=not progress,
                        leave=False):
    problem = check_pair(pair)
    if problem is None:
      good.append(pair)
    else:
      problems.append(problem)
  if problems and not skip_bad:
    raise errors.DataConfigError(f'{len(problems)} bad pair(s) in {ir_dir} / {vis_dir} (data.skip_bad=True leaves '
                                 'them out): ' + '; '.join(problems))
  skipped += problems
  if skipped:
    logging.warning('Skipped %d file(s)/pair(s) in %s / %s:\n  %s', len(skipped), ir_dir, vis_dir,
                    '\n  '.join(skipped))
  if not good:
    raise errors.DataConfigError(f'no usable pairs in {ir_dir} / {vis_dir}' +
                                 (f' ({len(skipped)} skipped)' if skipped else ''))
  return FolderScan(good, skipped)


def load_pair(pair: images.ImagePair) -> dict[str, np.ndarray | str]:
  """{'name', 'ir', 'vis'}: infrared and visible Y as float32 HxW in [0, 1] (the network's inputs)."""
  ir = images.load_ir(pair.ir_path)
  vis, _ = images.load_vis(pair.vis_path)
  if ir.shape != vis.shape:
    raise images.size_mismatch(pair.ir_path, ir.shape, pair.vis_path, vis.shape)
  return {'name': pair.name, 'ir': ir, 'vis': vis}
