"""Pose-transfer pairs from a folder of video frames of one person (Everybody-Dance-Now style).

Frame i gives the pose, frame j != i the appearance, and frame i is the ground truth. Frames are read with
input_pipeline.images.read_image, optionally cropped to the person (a fixed box or the central square) and resized
to a square float32 RGB image in [0, 1].
"""
import os
import pathlib
from typing import Sequence

import numpy as np

from input_pipeline import errors
from input_pipeline import images

PathLike = str | os.PathLike
Box = tuple[int, int, int, int]  # (top, left, height, width) in pixels


def list_frames(folder: PathLike) -> list[pathlib.Path]:
  """Image files of `folder` in natural (frame-number) order; at least two, or a ValueError naming the folder."""
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise errors.DataConfigError(f'frame folder {folder} does not exist')
  frames = sorted((p for p in folder.iterdir() if p.suffix.lower() in images.IMAGE_EXTENSIONS),
                  key=lambda p: images._natural_key(p.stem))  # pylint: disable=protected-access (shared ordering)
  if len(frames) < 2:
    raise errors.DataConfigError(f'{folder}: needs at least 2 image frames to make pairs, found {len(frames)}')
  return frames


def parse_crop(text: str) -> str | Box | None:
  """A crop as config files and flags spell it: 'center', 'none' or 'top,left,height,width' (pixels)."""
  if text in ('center', 'none'):
    return None if text == 'none' else text
  try:
    top, left, height, width = (int(v) for v in text.split(','))
  except ValueError:
    raise errors.DataConfigError(f"crop must be 'center', 'none' or 'top,left,height,width'; got {text!r}") from None
  return top, left, height, width


def crop_box(shape: Sequence[int], crop: str | Box | None) -> Box:
  """The (top, left, height, width) box of `crop`: None = the whole frame, 'center' = the central square."""
  h, w = shape[0], shape[1]
  if crop is None:
    return 0, 0, h, w
  if crop == 'center':
    return images.center_box((h, w), min(h, w), min(h, w))
  if isinstance(crop, str):
    raise ValueError(f"crop must be None, 'center' or (top, left, height, width); got {crop!r}")
  top, left, height, width = (int(v) for v in crop)
  if top < 0 or left < 0 or height <= 0 or width <= 0 or top + height > h or left + width > w:
    raise errors.DataConfigError(f'crop box {crop} does not fit a {h}x{w} frame')
  return top, left, height, width


def load_frame(path: PathLike, size: int, crop: str | Box | None = 'center') -> np.ndarray:
  """One frame as float32 [size, size, 3] in [0, 1]: read, cropped, resized (area-averaging when shrinking)."""
  array = images.read_image(path)
  if array.ndim == 2:
    array = np.repeat(array[..., None], 3, axis=-1)
  top, left, height, width = crop_box(array.shape, crop)
  unit = images.to_unit_float(array[top:top + height, left:left + width])
  # Pillow's reducing_gap pre-shrinks by box averaging before the bilinear pass, so large frames do not alias.
  resized = images.resize_image(unit, (size, size), reducing_gap=2.0 if size < min(height, width) else None)
  return np.clip(resized, 0.0, 1.0).astype(np.float32)


def frame_pairs(num_frames: int, num_pairs: int, seed: int = 0) -> list[tuple[int, int]]:
  """Distinct (pose frame i, appearance frame j) index pairs with i != j, deterministic from `seed`: `num_pairs` of
  them, or all num_frames * (num_frames - 1) when there are fewer."""
  if num_frames < 2:
    raise ValueError(f'needs at least 2 frames, got {num_frames}')
  rng = np.random.default_rng(seed)
  if num_pairs >= num_frames * (num_frames - 1):
    pairs = [(i, j) for i in range(num_frames) for j in range(num_frames) if i != j]
    return [pairs[k] for k in rng.permutation(len(pairs))]
  pairs = {}  # a dict keeps the drawing order
  while len(pairs) < num_pairs:
    i, j = rng.choice(num_frames, size=2, replace=False)
    pairs[int(i), int(j)] = None
  return list(pairs)


def split_frames(frames: Sequence[pathlib.Path], holdout_fraction: float,
                 folder: PathLike) -> tuple[list[pathlib.Path], list[pathlib.Path]]:
  """(train, held-out) frames: the last `holdout_fraction` of the video (at least 2 frames) is held out, so the
  held-out poses are a later stretch of the video rather than neighbours of training frames."""
  if not 0.0 < holdout_fraction < 1.0:
    raise errors.DataConfigError(f'holdout_fraction must be in (0, 1), got {holdout_fraction}')
  held_out = max(2, round(holdout_fraction * len(frames)))
  if len(frames) - held_out < 2:
    raise errors.DataConfigError(f'{folder}: {len(frames)} frames are too few to hold out {held_out} for '
                                 'evaluation and train on at least 2; add frames or give separate test frames')
  return list(frames[:-held_out]), list(frames[-held_out:])


class FrameTrainSample:
  """Index -> one training element (deterministic from seed and index): source = truth = frame i, target = frame
  j != i. With support frames (other people), also an unpaired support_source (a support frame: another person's
  pose) and support_target (a frame of this person), which has no ground truth. A picklable callable for grain.

  With `cache`, each frame is decoded once and kept in memory at the training size as 8-bit (size^2 x 3 bytes per
  frame): decoding a full-HD frame costs far more than a training step on an accelerator.
  """

  def __init__(self, frames: Sequence[pathlib.Path], size: int, *, crop: str | Box | None = 'center', seed: int = 0,
               support_frames: Sequence[pathlib.Path] | None = None, cache: bool = False):
    if len(frames) < 2:
      raise ValueError(f'needs at least 2 training frames, got {len(frames)}')
    self.frames, self.support_frames = list(frames), list(support_frames or ())
    self.size, self.crop, self.seed = size, crop, seed
    self._cache = {} if cache else None

  def _load(self, path: pathlib.Path) -> np.ndarray:
    if self._cache is None:
      return load_frame(path, self.size, self.crop)
    # grain's reader threads share the dict; a race only decodes a frame twice.
    if path not in self._cache:
      self._cache[path] = np.round(load_frame(path, self.size, self.crop) * 255.0).astype(np.uint8)
    return self._cache[path].astype(np.float32) / 255.0

  def __call__(self, index: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng((self.seed, int(index)))
    i, j = rng.choice(len(self.frames), size=2, replace=False)
    source = self._load(self.frames[i])
    element = {'source': source, 'target': self._load(self.frames[j]), 'truth': source}
    if self.support_frames:
      element['support_source'] = self._load(self.support_frames[rng.integers(len(self.support_frames))])
      element['support_target'] = self._load(self.frames[rng.integers(len(self.frames))])
    return element


def load_pairs(frames: Sequence[pathlib.Path], pairs: Sequence[tuple[int, int]], size: int,
               crop: str | Box | None = 'center') -> dict[str, np.ndarray]:
  """Stacked {'source', 'target', 'truth'} [N,size,size,3] of (pose i, appearance j) index pairs into `frames`;
  each frame is read once."""
  used = sorted({k for pair in pairs for k in pair})
  loaded = dict(zip(used, (load_frame(frames[k], size, crop) for k in used)))
  source = np.stack([loaded[i] for i, _ in pairs])
  return {'source': source, 'target': np.stack([loaded[j] for _, j in pairs]), 'truth': source}

