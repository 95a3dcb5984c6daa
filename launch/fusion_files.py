"""Fusing image files with an ISFuse model: pair loading, size reconciliation, folder fusion.

Shared by launch.fuse and launch.evaluate_cfi (library code: no flags, no process exit; errors are ProjectErrors).
"""
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from cfi_jax import bucketed
from cfi_jax import inference
from cfi_jax.model import ISFuse
from input_pipeline import images
from input_pipeline import paired_folders
from launch import checkpoints


PairError = images.PairError


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


def load_pair(ir_path: pathlib.Path, vis_path: pathlib.Path,
              resize_to: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
  """(ir, vis_y, vis_crcb or None) as float32 in [0,1], with sizes reconciled as `resize_to` asks."""
  try:
    ir = images.load_ir(ir_path)
    vis_y, crcb = images.load_vis(vis_path)
  except images.ImageReadError as e:
    raise PairError(str(e)) from e
  size = paired_folders.pair_size(ir.shape, vis_y.shape, ir_path, vis_path, resize_to=resize_to,
                                  fix=images.RESIZE_FLAG, check_size=bucketed.check_size)
  if vis_y.shape != size:
    vis_y = images.resize_image(vis_y, size)
    crcb = None if crcb is None else images.resize_image(crcb, size)
  if ir.shape != size:
    ir = images.resize_image(ir, size)
  return ir, vis_y, crcb


def _fuse_file(fuser: inference.BucketedFuser, ir_path: pathlib.Path, vis_path: pathlib.Path,
               out_path: pathlib.Path, resize_to: str | None) -> None:
  ir, vis_y, crcb = load_pair(ir_path, vis_path, resize_to)
  images.save_fused(out_path, fuser.fuse(vis_y, ir), crcb)


def fuse_file(model: ISFuse, variables: Mapping[str, Any], ir_path: pathlib.Path, vis_path: pathlib.Path,
              out_path: pathlib.Path, resize_to: str | None) -> None:
  """Fuses one pair of image files and writes the result (colour when the visible image is colour)."""
  _fuse_file(inference.BucketedFuser(model, variables), ir_path, vis_path, out_path, resize_to)


def _fused_shape(pair: images.ImagePair, resize_to: str | None) -> tuple[int, int] | None:
  """(H, W) the network will see for a pair, from the headers (load_pair resizes to the IR unless told 'vis')."""
  return images.image_shape(pair.vis_path if resize_to == 'vis' else pair.ir_path)


def fuse_folder(model: ISFuse, variables: Mapping[str, Any], ir_dir: str, vis_dir: str, out_dir: str,
                resize_to: str | None, skip_bad: bool) -> list[tuple[str, str]]:
  """Fuses every pair of two folders into out_dir; returns the skipped (name, reason) when skip_bad is set."""
  pairs, skipped = paired_folders.list_pairs(ir_dir, vis_dir, skip_bad=skip_bad)
  out_dir = pathlib.Path(out_dir)
  # One compiled program per bucket of sizes, so a folder of many sizes compiles a few times, not once per size;
  # the buckets are planned from the files' headers (unreadable ones fail, or are skipped, when they are loaded).
  fuser = inference.BucketedFuser(model, variables)
  fuser.plan([shape for pair in pairs if (shape := _fused_shape(pair, resize_to))])

  def fuse(pair: images.ImagePair) -> None:
    _fuse_file(fuser, pair.ir_path, pair.vis_path, out_dir / f'{pair.name}.png', resize_to)

  for _ in paired_folders.each_good_pair(pairs, fuse, skip_bad=skip_bad, skipped=skipped, desc='fusing'):
    pass
  return skipped
