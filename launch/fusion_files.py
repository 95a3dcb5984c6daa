"""Fusing image files with an ISFuse model: pair loading, size reconciliation, folder fusion.

Shared by launch.fuse and launch.evaluate_cfi (library code: no flags, no process exit; errors are ProjectErrors).
"""
import os
import pathlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from absl import logging
import numpy as np
import tqdm

from cfi_jax import bucketed
from cfi_jax import inference
from cfi_jax.model import ISFuse
from input_pipeline import images
from launch import checkpoints


PairError = images.PairError
T = TypeVar('T')


def load_model(checkpoint: str | os.PathLike, step: int | None = None) -> tuple[ISFuse, dict[str, Any]]:
  """(ISFuse, variables) of an ISFuse checkpoint (the newest readable step by default).

  Raises:
    checkpoints.CheckpointError: no checkpoint there, or one of another model.
  """
  variables, config = checkpoints.restore_model_variables(checkpoint, step)
  if config['model'] != 'cfi':
    raise checkpoints.CheckpointError(f'{checkpoint} holds a {config["model"]!r} model, not a CFI one; pass a '
                                      'checkpoint of launch.train with a cfi config, or of launch.import_cfi_release')
  return inference.model_from_config(config['model_config']), variables


def size_mismatch(ir_path: pathlib.Path, ir_shape: tuple[int, ...], vis_path: pathlib.Path,
                  vis_shape: tuple[int, ...]) -> PairError:
  """The error for a pair whose images differ in size (without a resize_to choice)."""
  return images.size_mismatch(ir_path, ir_shape, vis_path, vis_shape, images.RESIZE_FLAG)


def load_pair(ir_path: pathlib.Path, vis_path: pathlib.Path,
              resize_to: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
  """(ir, vis_y, vis_crcb or None) as float32 in [0,1], with sizes reconciled as `resize_to` asks."""
  try:
    ir = images.load_ir(ir_path)
    vis_y, crcb = images.load_vis(vis_path)
  except images.ImageReadError as e:
    raise PairError(str(e)) from e
  if ir.shape != vis_y.shape:
    if resize_to is None:
      raise size_mismatch(ir_path, ir.shape, vis_path, vis_y.shape)
    if resize_to == 'ir':
      vis_y = images.resize_image(vis_y, ir.shape)
      crcb = None if crcb is None else images.resize_image(crcb, ir.shape)
    else:
      ir = images.resize_image(ir, vis_y.shape)
  try:
    bucketed.check_size(*ir.shape, what=f'{ir_path} / {vis_path}')
  except bucketed.ImageTooSmallError as e:
    raise PairError(str(e)) from e
  return ir, vis_y, crcb


def _fuse_file(fuser: inference.BucketedFuser, ir_path: pathlib.Path, vis_path: pathlib.Path,
               out_path: pathlib.Path, resize_to: str | None) -> None:
  ir, vis_y, crcb = load_pair(ir_path, vis_path, resize_to)
  images.save_fused(out_path, fuser.fuse(vis_y, ir), crcb)


def fuse_file(model: ISFuse, variables: Mapping[str, Any], ir_path: pathlib.Path, vis_path: pathlib.Path,
              out_path: pathlib.Path, resize_to: str | None) -> None:
  """Fuses one pair of image files and writes the result (colour when the visible image is colour)."""
  _fuse_file(inference.BucketedFuser(model, variables), ir_path, vis_path, out_path, resize_to)


def list_pairs(ir_dir: str, vis_dir: str, skip_bad: bool) -> tuple[list[images.ImagePair], list[tuple[str, str]]]:
  """(pairs, skipped (file, reason)): the pairs of two folders; files without a partner are an error unless
  skip_bad is set, which returns them as skipped."""
  pairs, unpaired = images.pair_files(ir_dir, vis_dir, skip_unpaired=skip_bad)
  return pairs, [tuple(line.partition(': ')[::2]) for line in unpaired]


def each_pair(pairs: Sequence[images.ImagePair], work: Callable[[images.ImagePair], T], skip_bad: bool,
              skipped: list[tuple[str, str]], desc: str) -> Iterator[tuple[images.ImagePair, T]]:
  """(pair, work(pair)) for every pair, with a progress bar; a PairError stops the run, or with skip_bad is logged,
  appended to `skipped` as (name, reason) and the pair left out."""
  for pair in tqdm.tqdm(pairs, desc=desc, unit='pair'):
    try:
      result = work(pair)
    except PairError as e:
      if not skip_bad:
        raise
      logging.warning('Skipping pair %s: %s', pair.name, e)
      skipped.append((pair.name, str(e)))
      continue
    yield pair, result


def fuse_folder(model: ISFuse, variables: Mapping[str, Any], ir_dir: str, vis_dir: str, out_dir: str,
                resize_to: str | None, skip_bad: bool) -> list[tuple[str, str]]:
  """Fuses every pair of two folders into out_dir; returns the skipped (name, reason) when skip_bad is set."""
  pairs, skipped = list_pairs(ir_dir, vis_dir, skip_bad)
  out_dir = pathlib.Path(out_dir)
  # One compiled program per bucket of sizes, so a folder of many sizes compiles a few times, not once per size.
  fuser = inference.BucketedFuser(model, variables)

  def fuse(pair: images.ImagePair) -> None:
    _fuse_file(fuser, pair.ir_path, pair.vis_path, out_dir / f'{pair.name}.png', resize_to)

  for _ in each_pair(pairs, fuse, skip_bad, skipped, desc='fusing'):
    pass
  return skipped
