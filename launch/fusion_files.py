"""Fusing image files with an ISFuse model: pair loading, size reconciliation, folder fusion.

Shared by launch.fuse and launch.evaluate (library code: no flags, no process exit).
"""
import pathlib
from collections.abc import Mapping
from typing import Any

from absl import logging
import numpy as np
import tqdm

from cfi_jax import bucketed
from cfi_jax import inference
from cfi_jax.model import ISFuse
from input_pipeline import images


class PairError(ValueError):
  """A pair cannot be fused or scored (unreadable file or mismatched sizes); the message names the files."""


def size_mismatch(ir_path: pathlib.Path, ir_shape: tuple[int, ...], vis_path: pathlib.Path,
                  vis_shape: tuple[int, ...]) -> PairError:
  """The error for a pair whose images differ in size (without a resize_to choice)."""
  return PairError(f'size mismatch: IR {ir_path} is {ir_shape[1]}x{ir_shape[0]} but VIS {vis_path} is '
                   f'{vis_shape[1]}x{vis_shape[0]} (WxH); pass --resize_to=ir or --resize_to=vis')


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
  return ir, vis_y, crcb


def _fuse_file(fuser: inference.BucketedFuser, ir_path: pathlib.Path, vis_path: pathlib.Path,
               out_path: pathlib.Path, resize_to: str | None) -> None:
  ir, vis_y, crcb = load_pair(ir_path, vis_path, resize_to)
  try:
    fused = fuser.fuse(vis_y, ir)
  except bucketed.ImageTooSmallError as e:
    raise PairError(f'{ir_path} / {vis_path}: {e}') from e
  images.save_fused(out_path, fused, crcb)


def fuse_file(model: ISFuse, variables: Mapping[str, Any], ir_path: pathlib.Path, vis_path: pathlib.Path,
              out_path: pathlib.Path, resize_to: str | None) -> None:
  """Fuses one pair of image files and writes the result (colour when the visible image is colour)."""
  _fuse_file(inference.BucketedFuser(model, variables), ir_path, vis_path, out_path, resize_to)


def fuse_folder(model: ISFuse, variables: Mapping[str, Any], ir_dir: str, vis_dir: str, out_dir: str,
                resize_to: str | None, skip_bad: bool) -> list[tuple[str, str]]:
  """Fuses every pair of two folders into out_dir; returns the skipped (name, reason) when skip_bad is set."""
  pairs = images.find_pairs(ir_dir, vis_dir)
  out_dir = pathlib.Path(out_dir)
  skipped = []
  # One compiled program per bucket of sizes, so a folder of many sizes compiles a few times, not once per size.
  fuser = inference.BucketedFuser(model, variables)
  for pair in tqdm.tqdm(pairs, desc='fusing', unit='pair'):
    try:
      _fuse_file(fuser, pair.ir_path, pair.vis_path, out_dir / f'{pair.name}.png', resize_to)
    except PairError as e:
      if not skip_bad:
        raise
      logging.warning('Skipping pair %s: %s', pair.name, e)
      skipped.append((pair.name, str(e)))
  return skipped
