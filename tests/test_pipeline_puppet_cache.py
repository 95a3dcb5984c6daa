"""The on-disk cache of every puppet render (input_pipeline.puppet_cache) and the training pipeline reading it."""
import dataclasses

import ml_collections
import numpy as np
import pytest

from input_pipeline import errors
from input_pipeline import pose_data
from input_pipeline import puppet_cache
from input_pipeline import puppets

_SIZE = 24
_WORLD = puppets.PuppetWorld(seed=5, num_train_characters=3, num_support_characters=2, num_train_animations=2,
                             num_support_animations=2, frames_per_animation=4)
# One 8-bit level, rounded: the cache stores round(255 x) and reads it back divided by 255.
_QUANTISATION = 0.5 / 255 + 1e-7


def test_cached_samples_are_the_samplers_renders_in_8_bits(tmp_path):
  directory = puppet_cache.ensure(_WORLD, 'train', _SIZE, tmp_path, workers=1)
  cached = puppet_cache.CachedPuppetSampler(_WORLD, 'train', _SIZE, directory, sample_seed=7)
  rendered = puppets.PuppetSampler(_WORLD, 'train', _SIZE, sample_seed=7)
  indices = np.arange(12)
  got = cached.paired(indices)
  assert set(got) == set(pose_data.TRAIN_KEYS + pose_data.JOINT_KEYS)
  for position, index in enumerate(indices):
    want = rendered.paired(index)
    for key in pose_data.TRAIN_KEYS:
      assert got[key].dtype == np.uint8 and got[key][position].shape == want[key].shape
      np.testing.assert_allclose(got[key][position] / 255, want[key], rtol=0, atol=_QUANTISATION, err_msg=key)
    for key in pose_data.JOINT_KEYS:
      np.testing.assert_array_equal(got[key][position], want[key], err_msg=key)
  support = puppet_cache.ensure(_WORLD, 'support', _SIZE, tmp_path, workers=1)
  want = puppets.PuppetSampler(_WORLD, 'support', _SIZE).unpaired(3)
  got = puppet_cache.CachedPuppetSampler(_WORLD, 'support', _SIZE, support).unpaired([5, 3])
  for key in ('source', 'target'):
    np.testing.assert_allclose(got[key][1] / 255, want[key], rtol=0, atol=_QUANTISATION, err_msg=key)


def test_a_cache_is_built_once_per_world_split_and_size(tmp_path, monkeypatch):
  first = puppet_cache.ensure(_WORLD, 'train', _SIZE, tmp_path, workers=1)

  def no_render(*args):
    raise AssertionError('the cache was rendered again')
  monkeypatch.setattr(puppets, 'render', no_render)
  assert puppet_cache.ensure(_WORLD, 'train', _SIZE, tmp_path, workers=1) == first
  other_world = dataclasses.replace(_WORLD, seed=6)
  keys = {puppet_cache.cache_key(_WORLD, 'train', _SIZE), puppet_cache.cache_key(other_world, 'train', _SIZE),
          puppet_cache.cache_key(_WORLD, 'support', _SIZE), puppet_cache.cache_key(_WORLD, 'train', _SIZE + 8)}
  assert len(keys) == 4


def test_an_interrupted_build_leaves_nothing_behind(tmp_path, monkeypatch):
  render, calls = puppets.render, []

  def failing_render(*args):
    calls.append(1)
    if len(calls) > 5:
      raise KeyboardInterrupt
    return render(*args)
  monkeypatch.setattr(puppets, 'render', failing_render)
  with pytest.raises(KeyboardInterrupt):
    puppet_cache.ensure(_WORLD, 'train', _SIZE, tmp_path, workers=1)
  assert list(tmp_path.iterdir()) == []
  monkeypatch.setattr(puppets, 'render', render)
  directory = puppet_cache.ensure(_WORLD, 'train', _SIZE, tmp_path, workers=1)
  assert [p.name for p in tmp_path.iterdir()] == [directory.name]


def test_worker_processes_build_the_same_cache(tmp_path):
  serial = puppet_cache.ensure(_WORLD, 'support', _SIZE, tmp_path / 'serial', workers=1)
  parallel = puppet_cache.ensure(_WORLD, 'support', _SIZE, tmp_path / 'parallel', workers=2)
  for name in ('images.npy', 'joints.npy'):
    np.testing.assert_array_equal(np.load(serial / name), np.load(parallel / name))


def test_training_batches_from_the_cache_match_the_rendered_ones(tmp_path):
  config = ml_collections.ConfigDict(dict(
      name='puppets', image_size=_SIZE, world_seed=_WORLD.seed, num_train_characters=_WORLD.num_train_characters,
      num_test_characters=2, num_support_characters=_WORLD.num_support_characters,
      num_train_animations=_WORLD.num_train_animations, num_test_animations=2,
      num_support_animations=_WORLD.num_support_animations, frames_per_animation=_WORLD.frames_per_animation,
      support=True, workers=0, limb_mixing=0.0, limb_mixing_steps=0))
  kwargs = dict(seed=2, batch_size=3, with_joints=True)
  rendered = next(iter(pose_data.make_train_dataset(config, **kwargs)))
  cached = next(iter(pose_data.make_train_dataset(config, render_cache_dir=str(tmp_path), **kwargs)))
  assert {k: v.dtype for k, v in cached.items()} == {k: np.uint8 if v.ndim == 4 else np.float32
                                                      for k, v in rendered.items()}
  as_float = pose_data.images_to_float(cached)
  for key, want in rendered.items():
    assert as_float[key].dtype == want.dtype and as_float[key].shape == want.shape
    np.testing.assert_allclose(as_float[key], want, rtol=0, atol=_QUANTISATION if want.ndim == 4 else 0)
  assert len(list(tmp_path.iterdir())) == 2  # the train and the support split


def test_limb_mixing_cannot_read_from_the_cache(tmp_path):
  config = ml_collections.ConfigDict(dict(
      name='puppets', image_size=_SIZE, world_seed=_WORLD.seed, num_train_characters=_WORLD.num_train_characters,
      num_test_characters=2, num_support_characters=_WORLD.num_support_characters,
      num_train_animations=_WORLD.num_train_animations, num_test_animations=2,
      num_support_animations=_WORLD.num_support_animations, frames_per_animation=_WORLD.frames_per_animation,
      support=True, workers=0, limb_mixing=0.5))
  with pytest.raises(errors.DataConfigError, match='limb_mixing=0.5 .* --config.data.render_cache=False'):
    pose_data.make_train_dataset(config, seed=0, batch_size=2, render_cache_dir=str(tmp_path))
  assert not any(tmp_path.iterdir())  # refused before building anything
