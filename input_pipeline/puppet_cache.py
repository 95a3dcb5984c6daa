"""Every render of a finite puppet split, built once on disk, so that training reads batches instead of drawing them.

A split's characters and animation frames are finite (the default train split: 64 characters x 48 animations x 32
frames = 98 304 renders), and a paired sample only combines them: source = A in pose P, target = B in pose Q,
truth = B in P. Rendering five puppets per sample in Python keeps 128-px training at about 3 batches of 16 per
second per core; reading them from memory-mapped arrays, as uint8 batches, is over 30 times faster.

A cache holds the images as 8-bit ([C, A, F, S, S, 3] uint8, round(255 x) of the render's x in [0, 1])
and the joints exactly ([C, A, F, J, 2] float32), under a directory named after the split, the size and a hash of
everything the renders depend on (the world's fields and this renderer's source), so a changed world or renderer
never reads stale renders. It is written to a temporary directory and renamed into place when complete, so an
interrupted build leaves nothing that looks finished, and two processes building at once both end with one cache.
"""
import concurrent.futures
import dataclasses
import hashlib
import inspect
import multiprocessing
import os
import pathlib
import shutil

import numpy as np
import tqdm

from input_pipeline import puppets

_IMAGES, _JOINTS = 'images.npy', 'joints.npy'


def cache_key(world: puppets.PuppetWorld, split: str, size: int) -> str:
  """The directory name of a split's renders: split, size and a hash of the world and the renderer's source."""
  identity = repr((dataclasses.astuple(world), split, size, inspect.getsource(puppets)))
  return f'{split}_{size}px_{hashlib.sha256(identity.encode()).hexdigest()[:16]}'


def _render_character(directory: str, world: puppets.PuppetWorld, split: str, size: int, index: int) -> int:
  """Renders character `index` in every frame of every animation into the cache arrays being built."""
  characters, animations = world.split_pools(split)
  frames = world.frames_per_animation
  images = np.load(os.path.join(directory, _IMAGES), mmap_mode='r+')
  joints = np.load(os.path.join(directory, _JOINTS), mmap_mode='r+')
  for a, animation in enumerate(animations):
    for f in range(frames):
      render = puppets.render(characters[index], animation.pose(f / frames), size)
      images[index, a, f] = np.round(render.image * 255)
      joints[index, a, f] = render.joints
  images.flush()
  joints.flush()
  return index


def ensure(world: puppets.PuppetWorld, split: str, size: int, root: str | os.PathLike,
           workers: int | None = None) -> pathlib.Path:
  """The cache directory of `split` at `size` under `root`, rendering it first when it does not exist.

  workers: processes that render (default: the CPUs this process may use); 1 renders in this process.
  """
  final = pathlib.Path(root) / cache_key(world, split, size)
  if (final / _JOINTS).exists():
    return final
  characters, animations = world.split_pools(split)
  shape = (len(characters), len(animations), world.frames_per_animation)
  final.parent.mkdir(parents=True, exist_ok=True)
  building = final.with_name(f'.{final.name}.building-{os.getpid()}')
  shutil.rmtree(building, ignore_errors=True)
  building.mkdir()
  try:
    np.lib.format.open_memmap(building / _IMAGES, mode='w+', dtype=np.uint8, shape=shape + (size, size, 3)).flush()
    np.lib.format.open_memmap(building / _JOINTS, mode='w+', dtype=np.float32,
                              shape=shape + (puppets.NUM_JOINTS, 2)).flush()
    workers = workers or len(os.sched_getaffinity(0))
    progress = tqdm.tqdm(total=len(characters), unit='character',
                         desc=f'render {split} once ({np.prod(shape)} renders at {size} px) into {final}')
    with progress:
      if workers == 1:
        for index in range(len(characters)):
          _render_character(str(building), world, split, size, index)
          progress.update()
      else:
        # 'spawn': the parent may already run JAX's threads, which a forked child must not inherit.
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context('spawn')) as pool:
          for future in concurrent.futures.as_completed(
              [pool.submit(_render_character, str(building), world, split, size, i) for i in range(len(characters))]):
            future.result()
            progress.update()
    try:
      building.rename(final)
    except OSError:
      if not (final / _JOINTS).exists():  # not another process's finished cache: a real failure
        raise
  finally:
    shutil.rmtree(building, ignore_errors=True)
  return final


class CachedPuppetSampler:
  """PuppetSampler's samples (the same draws, deterministic from world seed, sample_seed and index), read from a
  cache (ensure) instead of rendered, a batch of indices at a time (one gather per image key, no per-sample arrays).

  Images come as stored, uint8: x / 255 is within 0.5/255 of the render. Dividing a whole batch on the accelerator
  is cheaper than here, where a fresh float32 array per sample held the host to ~20-40 batches/s. Joints are exact.
  paired() gives source, target and truth with their joints; evaluation keeps rendering (silhouettes,
  backgrounds, full precision).

  Picklable: each process (a grain worker included) maps the arrays on its first batch.
  """

  def __init__(self, world: puppets.PuppetWorld, split: str, size: int, directory: str | os.PathLike,
               sample_seed: int = 0):
    self.sampler = puppets.PuppetSampler(world, split, size, sample_seed=sample_seed)
    self.directory = pathlib.Path(directory)
    self._arrays = None

  def __getstate__(self):
    return {**self.__dict__, '_arrays': None}

  def _draws(self, indices) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Characters A, B [n] and (animation, frame) of the source's and the target's poses [n, 2] of `indices`."""
    a, b, source_poses, target_poses = zip(*(self.sampler.draw_indices(int(i)) for i in indices))
    return np.array(a), np.array(b), np.array(source_poses), np.array(target_poses)

  def _gather(self, characters: np.ndarray, poses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if self._arrays is None:
      self._arrays = tuple(np.load(self.directory / name, mmap_mode='r') for name in (_IMAGES, _JOINTS))
    images, joints = self._arrays
    return (np.asarray(images[characters, poses[:, 0], poses[:, 1]]),
            np.asarray(joints[characters, poses[:, 0], poses[:, 1]]))

  def paired(self, indices) -> dict[str, np.ndarray]:
    """Samples `indices`, stacked: source, target, truth [n, S, S, 3] uint8 and their joints [n, J, 2]."""
    a, b, source_poses, target_poses = self._draws(indices)
    source, source_joints = self._gather(a, source_poses)
    target, target_joints = self._gather(b, target_poses)
    truth, truth_joints = self._gather(b, source_poses)
    return {'source': source, 'target': target, 'truth': truth, 'source_joints': source_joints,
            'target_joints': target_joints, 'truth_joints': truth_joints}

  def unpaired(self, indices) -> dict[str, np.ndarray]:
    """Samples `indices`, stacked: source and target [n, S, S, 3] uint8."""
    a, b, source_poses, target_poses = self._draws(indices)
    return {'source': self._gather(a, source_poses)[0], 'target': self._gather(b, target_poses)[0]}
