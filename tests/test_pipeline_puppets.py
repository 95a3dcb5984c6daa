"""Puppet renderer, its splits and the DFC-Net data pipelines (puppets and video frames)."""
import dataclasses
import math

import ml_collections
import numpy as np
from PIL import Image
import pytest

from input_pipeline import errors
from input_pipeline import images
from input_pipeline import pose_data
from input_pipeline import puppets
from input_pipeline import video_frames

_WORLD = puppets.PuppetWorld(seed=3, num_train_characters=6, num_test_characters=3, num_support_characters=3,
                             num_train_animations=8, num_test_animations=4, num_support_animations=4)


def _data_config(**overrides) -> ml_collections.ConfigDict:
  fields = dict(name='puppets', image_size=32, world_seed=3, num_train_characters=6, num_test_characters=3,
                num_support_characters=3, num_train_animations=8, num_test_animations=4, num_support_animations=4,
                frames_per_animation=16, support=True, workers=0, limb_mixing=0.0, limb_mixing_steps=0)
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def test_same_render_twice_is_identical():
  char_a = puppets.make_character(3, 'train', 0)
  char_b = puppets.make_character(3, 'train', 1)
  pose = puppets.make_animation(3, 'train', 2, puppets.TRAIN_ANIMATION_TYPES).pose(0.3)
  first, second = puppets.render(char_b, pose, 64), puppets.render(char_b, pose, 64)
  for x, y in zip(first, second):
    np.testing.assert_array_equal(x, y)
  # Same character and pose, but a different character: a different image.
  assert np.abs(puppets.render(char_a, pose, 64).image - first.image).mean() > 0.01


def test_paired_samples_are_deterministic_and_the_truth_is_b_in_a_pose():
  sampler = puppets.PuppetSampler(_WORLD, 'train', 48)
  again = puppets.PuppetSampler(_WORLD, 'train', 48)
  for index in range(3):
    sample, repeat = sampler.paired(index), again.paired(index)
    for key in sample:
      np.testing.assert_array_equal(sample[key], repeat[key])
    # Retargeting keeps every joint angle: each bone of the truth points the same way as the source's bone.
    for parent, child in (('l_shoulder', 'l_elbow'), ('l_elbow', 'l_hand'), ('r_hip', 'r_knee'),
                          ('r_knee', 'r_foot'), ('pelvis', 'neck')):
      p, c = puppets.JOINT_NAMES.index(parent), puppets.JOINT_NAMES.index(child)
      source_bone = sample['source_joints'][c] - sample['source_joints'][p]
      truth_bone = sample['truth_joints'][c] - sample['truth_joints'][p]
      cosine = source_bone @ truth_bone / (np.linalg.norm(source_bone) * np.linalg.norm(truth_bone))
      assert cosine == pytest.approx(1.0, abs=1e-5)
    # The truth has the target's look: same backdrop colours (pixel (0, 0) is always background).
    np.testing.assert_allclose(sample['truth'][0, 0], sample['target'][0, 0], atol=1e-6)


def test_limb_mixing_recombines_limbs_of_the_splits_frames():
  fields = [f.name for f in dataclasses.fields(puppets.Pose)]
  assert sorted(sum(puppets.LIMB_GROUPS, ())) == sorted(fields)  # every pose field in exactly one group
  frames = _WORLD.frames_per_animation
  plain, mixed = (puppets.PuppetSampler(_WORLD, 'train', 32, limb_mixing=p) for p in (0.0, 1.0))
  pool = [animation.pose(f / frames) for animation in plain.animations for f in range(frames)]
  recombined = 0
  for index in range(12):
    # Every group of both poses comes from one frame of the split.
    for pose in mixed._draw(index)[2:]:
      donors = [[i for i, frame in enumerate(pool) if all(getattr(frame, n) == getattr(pose, n) for n in group)]
                for group in puppets.LIMB_GROUPS]
      assert all(donors)
      recombined += not set.intersection(*map(set, donors))  # no single frame holds this pose
  assert recombined >= 20
  # The truth is still the target's character in the (mixed) source pose: its bones point the source's way.
  sample = mixed.paired(0)
  for parent, child in (('l_shoulder', 'l_elbow'), ('r_knee', 'r_foot')):
    p, c = puppets.JOINT_NAMES.index(parent), puppets.JOINT_NAMES.index(child)
    source_bone, truth_bone = (sample[k][c] - sample[k][p] for k in ('source_joints', 'truth_joints'))
    assert source_bone @ truth_bone / (np.linalg.norm(source_bone) * np.linalg.norm(truth_bone)) == pytest.approx(1.0)
  # The training pipeline draws the mixed poses.
  config = _data_config(limb_mixing=1.0)
  batch = next(iter(pose_data.make_train_dataset(config, seed=0, batch_size=2, with_joints=True)))
  world = pose_data.make_world(config)
  np.testing.assert_array_equal(batch['source_joints'][0],
                                puppets.PuppetSampler(world, 'train', 32, limb_mixing=1.0).paired(0)['source_joints'])
  assert np.abs(batch['source_joints'][0] - puppets.PuppetSampler(world, 'train', 32).paired(0)['source_joints']
                ).max() > 0.5
  with pytest.raises(ValueError, match='limb_mixing must be a probability'):
    puppets.PuppetSampler(_WORLD, 'train', 32, limb_mixing=1.5)


@pytest.mark.parametrize('process_index', [0, 1])
def test_limb_mixing_steps_mix_only_the_first_steps_batches(process_index):
  config = _data_config(limb_mixing=1.0, limb_mixing_steps=2)
  world = pose_data.make_world(config)
  plain, mixed = (puppets.PuppetSampler(world, 'train', 32, sample_seed=4, limb_mixing=p) for p in (0.0, 1.0))
  batches = iter(pose_data.make_train_dataset(config, seed=4, batch_size=4, process_index=process_index,
                                              process_count=2, with_joints=True))
  for step in range(4):
    batch = next(batches)
    # This process's two samples of the step: global indices 4 step + process_index + (0, 2).
    for row, index in enumerate(range(4 * step + process_index, 4 * step + 4, 2)):
      want = (mixed if step < 2 else plain).paired(index)['source_joints']
      np.testing.assert_array_equal(batch['source_joints'][row], want)
  with pytest.raises(errors.DataConfigError, match='limb_mixing_steps=-1 must be >= 0'):
    pose_data.make_train_dataset(_data_config(limb_mixing=0.5, limb_mixing_steps=-1), seed=0, batch_size=2)


@pytest.mark.parametrize('kind', puppets.TRAIN_ANIMATION_TYPES + puppets.UNSEEN_ANIMATION_TYPES)
def test_true_joints_lie_inside_the_silhouette(kind):
  for index in range(3):
    character = puppets.make_character(5, 'train', index)
    animation = dataclasses.replace(puppets.make_animation(5, 'train', index, (kind,)), amplitude=1.2)
    for t in np.linspace(0.0, 1.0, 6, endpoint=False):
      result = puppets.render(character, animation.pose(float(t)), 64)
      assert result.image.shape == (64, 64, 3) and result.image.dtype == np.float32
      assert 0.0 <= result.image.min() and result.image.max() <= 1.0
      cols, rows = np.floor(result.joints.T).astype(int)
      assert ((rows >= 0) & (rows < 64) & (cols >= 0) & (cols < 64)).all(), (kind, t, result.joints)
      assert result.silhouette[rows, cols].all(), (kind, t)
      # Outside the silhouette the image is the backdrop.
      outside = ~result.silhouette & ~_dilate(result.silhouette)
      np.testing.assert_allclose(result.image[outside], result.background[outside], atol=1e-6)


def _dilate(mask: np.ndarray) -> np.ndarray:
  """Pixels within one of the mask (anti-aliased edges are partly covered)."""
  out = mask.copy()
  for axis in (0, 1):
    for shift in (-1, 1):
      out |= np.roll(mask, shift, axis=axis)
  return out


def test_any_resolution_scales_the_same_scene():
  character = puppets.make_character(0, 'test', 1)
  pose = puppets.make_animation(0, 'train', 4, puppets.TRAIN_ANIMATION_TYPES).pose(0.6)
  small, large = puppets.render(character, pose, 64), puppets.render(character, pose, 256)
  np.testing.assert_allclose(large.joints, 4 * small.joints, rtol=1e-5)
  # Box-downsampled big silhouette agrees with the small one.
  pooled = large.silhouette.reshape(64, 4, 64, 4).mean(axis=(1, 3)) >= 0.5
  iou = (pooled & small.silhouette).sum() / (pooled | small.silhouette).sum()
  assert iou > 0.85


def test_splits_are_disjoint():
  train_chars, train_anims = _WORLD.split_pools('train')
  test_chars, _ = _WORLD.split_pools('test_unseen_characters')
  _, unseen_anims = _WORLD.split_pools('test_unseen_animations')
  support_chars, support_anims = _WORLD.split_pools('support')
  assert not set(train_chars) & set(test_chars)
  assert not set(train_chars) & set(support_chars)
  assert not set(test_chars) & set(support_chars)
  assert not set(train_anims) & set(support_anims)
  assert {a.kind for a in unseen_anims} == set(puppets.UNSEEN_ANIMATION_TYPES)
  assert not {a.kind for a in train_anims} & set(puppets.UNSEEN_ANIMATION_TYPES)
  with pytest.raises(ValueError, match='unknown puppet split'):
    _WORLD.split_pools('validation')


def test_train_dataset_batches_shards_and_checkpoints():
  config = _data_config()
  dataset = pose_data.make_train_dataset(config, seed=0, batch_size=4, process_index=0, process_count=2)
  iterator = iter(dataset)
  batch = next(iterator)
  assert set(batch) == set(pose_data.TRAIN_KEYS + pose_data.SUPPORT_KEYS)
  for value in batch.values():
    assert value.shape == (2, 32, 32, 3) and value.dtype == np.float32
  other = next(iter(pose_data.make_train_dataset(config, seed=0, batch_size=4, process_index=1, process_count=2)))
  assert not np.array_equal(batch['source'], other['source'])
  # Process p holds samples p, p + P, ...: sample 1 is the first of process 1.
  np.testing.assert_array_equal(other['source'][0],
                                puppets.PuppetSampler(pose_data.make_world(config), 'train', 32).paired(1)['source'])
  state = iterator.get_state()
  expected = next(iterator)
  iterator.set_state(state)
  np.testing.assert_array_equal(next(iterator)['truth'], expected['truth'])
  no_support = next(iter(pose_data.make_train_dataset(_data_config(support=False), seed=0, batch_size=2)))
  assert set(no_support) == set(pose_data.TRAIN_KEYS)


def test_eval_and_calibration_sets():
  config = _data_config()
  eval_set = pose_data.make_eval_set(config, 'test_unseen_animations', 3)
  assert eval_set['truth'].shape == (3, 32, 32, 3)
  assert eval_set['truth_joints'].shape == (3, puppets.NUM_JOINTS, 2)
  assert eval_set['truth_silhouette'].dtype == bool
  calibration = pose_data.make_calibration_set(config, 4)
  assert calibration['images'].shape == (4, 32, 32, 3) and calibration['joints'].shape == (4, puppets.NUM_JOINTS, 2)


def test_video_frame_pairs(shared_dir):
  folder = shared_dir / 'data' / 'pose' / 'edn_subject4' / 'train_img'
  frames = video_frames.list_frames(folder)
  pairs = video_frames.frame_pairs(len(frames), 5, 1)
  assert len(pairs) == 5 and len(frames) == 10 and all(i != j for i, j in pairs)
  stacked = video_frames.load_pairs(frames, pairs, 64)
  assert stacked['source'].shape == (5, 64, 64, 3) and stacked['source'].dtype == np.float32
  np.testing.assert_array_equal(stacked['source'], stacked['truth'])
  for k, (i, j) in enumerate(pairs):
    np.testing.assert_array_equal(stacked['target'][k], video_frames.load_frame(frames[j], 64))
    assert not np.array_equal(stacked['source'][k], stacked['target'][k])
  # The central-square crop of a 1024x512 frame is its middle 512x512.
  assert video_frames.crop_box((512, 1024, 3), 'center') == (0, 256, 512, 512)


def test_video_frames_errors(tmp_path):
  with pytest.raises(errors.DataConfigError, match='does not exist'):
    video_frames.list_frames(tmp_path / 'missing')
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'a.png')
  with pytest.raises(ValueError, match='at least 2'):
    video_frames.list_frames(tmp_path)
  (tmp_path / 'b.png').write_bytes(b'not a png')
  with pytest.raises(images.ImageReadError, match='b.png'):
    video_frames.load_pairs(video_frames.list_frames(tmp_path), [(0, 1)], 16)
  with pytest.raises(ValueError, match='does not fit'):
    video_frames.crop_box((8, 8), (0, 0, 9, 8))
  assert math.isclose(video_frames.load_frame(tmp_path / 'a.png', 4).max(), 0.0)


def _puppet_video(folder, character_index: int, num_frames: int):
  """A 'video' of one puppet through one animation, as PNG frames (40 high, 56 wide) named frame1.png, ..."""
  folder.mkdir()
  character = puppets.make_character(3, 'train', character_index)
  animation = puppets.make_animation(3, 'train', 0, puppets.TRAIN_ANIMATION_TYPES)
  for t in range(num_frames):
    image = puppets.render(character, animation.pose(t / num_frames), 56).image[8:48]
    Image.fromarray((image * 255 + 0.5).astype(np.uint8)).save(folder / f'frame{t + 1}.png')
  return folder


def _frames_config(video, **overrides) -> ml_collections.ConfigDict:
  return _data_config(**{'name': 'frames', 'image_size': 16, 'support': False, **pose_data.FRAMES_DEFAULTS,
                         'crop': 'none', 'frames_dir': str(video), **overrides})


def _which(image, frames, config) -> int:
  """Index of the frame (read at the config's size) that `image` is, up to 8-bit rounding; -1 if none."""
  errors_ = [np.abs(video_frames.load_frame(f, config.image_size, None) - image).max() for f in frames]
  return int(np.argmin(errors_)) if min(errors_) <= 0.5 / 255 + 1e-6 else -1


def test_video_frame_training_holds_out_the_last_frames_and_adds_support(tmp_path):
  video = _puppet_video(tmp_path / 'person', 0, 12)
  others = _puppet_video(tmp_path / 'others', 1, 3)
  options = dict(holdout_fraction=0.25, support=True, support_frames_dir=str(others))
  config = _frames_config(video, **options)
  frames = video_frames.list_frames(video)
  assert [f.name for f in frames[:3]] == ['frame1.png', 'frame2.png', 'frame3.png']  # numeric, not 1, 10, 11
  train, test = pose_data.frame_splits(config)
  assert train == frames[:9] and test == frames[9:]
  batch = next(iter(pose_data.make_train_dataset(config, seed=0, batch_size=6)))
  assert set(batch) == set(pose_data.TRAIN_KEYS + pose_data.SUPPORT_KEYS)
  assert batch['source'].shape == (6, 16, 16, 3)
  np.testing.assert_array_equal(batch['source'], batch['truth'])
  for i in range(6):
    source, target = _which(batch['source'][i], train, config), _which(batch['target'][i], train, config)
    assert source >= 0 and target >= 0 and source != target
    assert _which(batch['support_source'][i], video_frames.list_frames(others), config) >= 0
    assert _which(batch['support_target'][i], train, config) >= 0
  # Cached frames are kept as 8 bits; without the cache, the same frames unrounded.
  np.testing.assert_allclose(batch['target'] * 255, np.round(batch['target'] * 255), atol=1e-3)
  uncached = next(iter(pose_data.make_train_dataset(_frames_config(video, **options, cache_frames=False), seed=0,
                                                    batch_size=6)))
  np.testing.assert_allclose(uncached['target'], batch['target'], atol=0.5 / 255 + 1e-6)
  assert not np.allclose(uncached['target'] * 255, np.round(uncached['target'] * 255), atol=1e-3)
  # Every ordered pair of the 3 held-out frames, once: fewer than the 50 asked for.
  eval_set = pose_data.make_eval_set(config, 'test_frames', 50)
  assert set(eval_set) == {'source', 'target', 'truth'} and len(eval_set['source']) == 6
  pairs = {(_which(s, test, config), _which(t, test, config)) for s, t in zip(eval_set['source'], eval_set['target'])}
  assert pairs == {(i, j) for i in range(3) for j in range(3) if i != j}
  # Separate test frames replace the hold-out: training then uses every frame of the video.
  separate = _frames_config(video, test_frames_dir=str(others))
  assert pose_data.frame_splits(separate) == (frames, video_frames.list_frames(others))
  assert pose_data.eval_splits(config, ['test_unseen_characters']) == ('test_frames',)
  assert pose_data.eval_splits(_data_config(), ['test_unseen_characters']) == ('test_unseen_characters',)


def test_video_frame_training_errors_name_the_problem(tmp_path):
  video = _puppet_video(tmp_path / 'person', 0, 3)
  with pytest.raises(errors.DataConfigError, match='frames_dir is not set'):
    pose_data.make_train_dataset(_frames_config(video, frames_dir=None), seed=0, batch_size=2)
  with pytest.raises(ValueError, match='support_frames_dir is not set'):
    pose_data.make_train_dataset(_frames_config(video, support=True, test_frames_dir=str(video)), seed=0,
                                 batch_size=2)
  with pytest.raises(ValueError, match='person: 3 frames are too few'):
    pose_data.make_train_dataset(_frames_config(video), seed=0, batch_size=2)
  with pytest.raises(ValueError, match="test split is 'test_frames'"):
    pose_data.make_eval_set(_frames_config(video, test_frames_dir=str(video)), 'test_unseen_characters', 2)
  with pytest.raises(ValueError, match='not supported'):
    pose_data.make_train_dataset(_data_config(name='mixamo'), seed=0, batch_size=2)
  with pytest.raises(errors.DataConfigError, match='holdout_fraction must be in'):
    pose_data.frame_splits(_frames_config(video, holdout_fraction=0.0))
  with pytest.raises(errors.DataConfigError, match='top,left,height,width'):
    video_frames.parse_crop('middle')
  assert video_frames.parse_crop('4,0,32,40') == (4, 0, 32, 40) and video_frames.parse_crop('none') is None


def test_frame_pairs_are_distinct():
  pairs = video_frames.frame_pairs(10, 40, seed=2)
  assert len(set(pairs)) == 40 and all(i != j and 0 <= i < 10 and 0 <= j < 10 for i, j in pairs)
  assert pairs == video_frames.frame_pairs(10, 40, seed=2) != video_frames.frame_pairs(10, 40, seed=3)
  assert sorted(video_frames.frame_pairs(3, 100)) == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]


def test_painting_each_shape_in_its_bounding_box_changes_no_pixel(monkeypatch):
  # Shapes at the image border (a small canvas, a jump) included: the full-grid painting is the reference.
  sampler = puppets.PuppetSampler(_WORLD, 'train', 20)
  samples = [sampler.paired(i) for i in range(6)] + [puppets.PuppetSampler(_WORLD, 'train', 64).paired(0)]
  monkeypatch.setattr(puppets._Canvas, 'window',  # pylint: disable=protected-access
                      lambda canvas, *bounds: (slice(None), slice(None), canvas.centres[None, :],
                                               canvas.centres[:, None]))
  full_grid = [puppets.PuppetSampler(_WORLD, 'train', 20).paired(i) for i in range(6)]
  full_grid.append(puppets.PuppetSampler(_WORLD, 'train', 64).paired(0))
  for windowed, full in zip(samples, full_grid):
    for key in windowed:
      np.testing.assert_array_equal(windowed[key], full[key], err_msg=key)
