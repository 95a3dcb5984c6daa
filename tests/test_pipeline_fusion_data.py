"""Tests of the fusion input pipelines: synthetic scenes, folders of pairs, the TFDS builder and the grain pipeline."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
from scipy import ndimage
import tensorflow_datasets as tfds

from input_pipeline import fusion_data
from input_pipeline import images
from input_pipeline import paired_folders
from input_pipeline import synthetic_fusion
from input_pipeline import tfds_fusion


def _dihedral(img: np.ndarray) -> list[np.ndarray]:
  """The 8 results of optional horizontal flip, vertical flip and transpose (the pipeline's augmentations)."""
  out = []
  for flip_h in (False, True):
    for flip_v in (False, True):
      for transpose in (False, True):
        x = img[:, ::-1] if flip_h else img
        x = x[::-1] if flip_v else x
        out.append(x.T if transpose else x)
  return out


def _write_pairs(root: pathlib.Path, pairs: dict[str, tuple[np.ndarray, np.ndarray]], ext: str = '.png',
                 vis_folder: str = 'vi') -> None:
  (root / 'ir').mkdir(parents=True, exist_ok=True)
  (root / vis_folder).mkdir(parents=True, exist_ok=True)
  for stem, (ir, vis) in pairs.items():
    Image.fromarray(ir).save(root / 'ir' / f'{stem}{ext}')
    Image.fromarray(vis).save(root / vis_folder / f'{stem}{ext}')


def _complementary_pairs(rng: np.random.Generator, count: int, shape: tuple[int, int]) -> dict:
  """Pairs whose infrared image is the negative of the visible one, so alignment survives any shared transform."""
  pairs = {}
  for i in range(count):
    vis = rng.integers(0, 256, shape, dtype=np.uint8)
    pairs[f'p{i}'] = (255 - vis, vis)
  return pairs


def _folder_config(data_dir, **overrides):
  config = fusion_data.default_data_config()
  config.name = 'folder'
  config.data_dir = str(data_dir)
  config.threads = 1
  config.update(overrides)
  return config


def _synthetic_config(**overrides):
  config = fusion_data.default_data_config()
  config.update(dict(num_synthetic=6, synthetic_size=32, crop_size=32, threads=1, num_eval=2))
  config.update(overrides)
  return config


def _take(ds, count: int) -> list[dict]:
  iterator = iter(ds)
  return [next(iterator) for _ in range(count)]


# --- synthetic scenes -------------------------------------------------------------------------------------------

def test_synthetic_pair_is_deterministic_any_size_and_in_range():
  a = synthetic_fusion.generate_pair((3, 1), 40, 72)
  b = synthetic_fusion.generate_pair((3, 1), 40, 72)
  c = synthetic_fusion.generate_pair((3, 2), 40, 72)
  assert a.ir.shape == (40, 72) and a.vis.shape == (40, 72, 3) and a.warm.shape == (40, 72)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a.vis, c.vis)
  for array in a:
    assert array.dtype == np.float32 and array.min() >= 0.0 and array.max() <= 1.0


def test_synthetic_modalities_are_complementary():
  """Warm objects stand out in infrared, not in the visible image; the visible image carries the fine texture."""
  ir_contrast, vis_contrast, ir_detail, vis_detail = [], [], [], []
  for i in range(16):
    pair = synthetic_fusion.generate_pair((11, i), 96, 96)
    y = images.rgb_to_ycrcb(pair.vis)[..., 0]
    objects = pair.warm > 0.99
    if objects.sum() < 10:
      continue
    surround = ndimage.binary_dilation(objects, iterations=4) & ~ndimage.binary_dilation(objects, iterations=1)
    ir_contrast.append(pair.ir[objects].mean() - pair.ir[surround].mean())
    vis_contrast.append(abs(y[objects].mean() - y[surround].mean()))
    ir_detail.append(np.abs(pair.ir - ndimage.gaussian_filter(pair.ir, 1.5)).mean())
    vis_detail.append(np.abs(y - ndimage.gaussian_filter(y, 1.5)).mean())
  assert len(ir_contrast) >= 10
  assert min(ir_contrast) > 0.05            # Warm objects are always brighter than their surroundings in IR.
  assert np.mean(ir_contrast) > 4 * np.mean(vis_contrast)
  assert np.mean(vis_detail) > 1.3 * np.mean(ir_detail)


def test_synthetic_rejects_tiny_size():
  with pytest.raises(ValueError, match='8x8'):
    synthetic_fusion.generate_pair(0, 4, 64)


# --- grain pipeline ---------------------------------------------------------------------------------------------

def _scene_index(crop: np.ndarray, scenes: list[np.ndarray]) -> int:
  matches = [i for i, scene in enumerate(scenes) if any(np.array_equal(crop, t) for t in _dihedral(scene))]
  assert len(matches) == 1, matches
  return matches[0]


def test_train_batches_are_deterministic_and_shards_disjoint():
  config = _synthetic_config()
  first = _take(fusion_data.make_train_dataset(config, seed=5, batch_size=2), 3)
  again = _take(fusion_data.make_train_dataset(config, seed=5, batch_size=2), 3)
  other = _take(fusion_data.make_train_dataset(config, seed=6, batch_size=2), 3)
  for a, b in zip(first, again):
    assert a.keys() == {'vis', 'ir'}
    assert a['vis'].shape == a['ir'].shape == (2, 32, 32, 1) and a['vis'].dtype == np.float32
    np.testing.assert_array_equal(a['vis'], b['vis'])
    np.testing.assert_array_equal(a['ir'], b['ir'])
  assert any(not np.array_equal(a['vis'], b['vis']) for a, b in zip(first, other))

  # crop == scene size, so each element is a whole scene up to flips/transpose: identify it.
  source = fusion_data.make_source(config, train=True)
  scenes = [source[i]['vis'] for i in range(len(source))]
  seen = []
  for process in range(2):
    # Global batch 2 = one pair per process; 3 batches = one epoch of this process's 3-scene shard.
    batches = _take(fusion_data.make_train_dataset(config, seed=5, batch_size=2, process_index=process,
                                                   process_count=2), 3)
    assert batches[0]['vis'].shape[0] == 1
    seen.append([_scene_index(b['vis'][0, ..., 0], scenes) for b in batches])
  assert len(set(seen[0])) == len(set(seen[1])) == 3   # An epoch visits every pair of the shard once.
  assert set(seen[0]).isdisjoint(seen[1]) and set(seen[0]) | set(seen[1]) == set(range(6))


def test_iterator_state_resumes_the_exact_batch_sequence():
  config = _synthetic_config(crop_size=24)
  iterator = iter(fusion_data.make_train_dataset(config, seed=2, batch_size=2))
  for _ in range(4):
    next(iterator)
  state = json.loads(json.dumps(iterator.get_state()))   # Must survive grain.checkpoint's JSON round trip.
  expected = [next(iterator) for _ in range(5)]           # Crosses into a second epoch (6 scenes / 2).
  resumed = iter(fusion_data.make_train_dataset(config, seed=2, batch_size=2))
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    np.testing.assert_array_equal(got['vis'], want['vis'])
    np.testing.assert_array_equal(got['ir'], want['ir'])


def test_worker_processes_do_not_change_the_batches():
  config = _synthetic_config(crop_size=24)
  serial = _take(fusion_data.make_train_dataset(config, seed=4, batch_size=2), 3)
  config.workers = 1
  iterator = iter(fusion_data.make_train_dataset(config, seed=4, batch_size=2))
  try:
    for want in serial:
      got = next(iterator)
      np.testing.assert_array_equal(got['vis'], want['vis'])
      np.testing.assert_array_equal(got['ir'], want['ir'])
  finally:
    iterator.close()


def test_decoded_cache_does_not_change_the_batches():
  # Scenes smaller than the crop, so the cache also holds the upscaled pairs; 8 batches cross into a second epoch.
  config = _synthetic_config(crop_size=40)
  plain = _take(fusion_data.make_train_dataset(config, seed=4, batch_size=2), 8)
  config.cache_decoded = True
  cached = _take(fusion_data.make_train_dataset(config, seed=4, batch_size=2), 8)
  for want, got in zip(plain, cached):
    np.testing.assert_array_equal(got['vis'], want['vis'])
    np.testing.assert_array_equal(got['ir'], want['ir'])


def test_crop_flip_transpose_are_shared_by_both_images(tmp_path):
  rng = np.random.default_rng(0)
  pairs = _complementary_pairs(rng, 3, (40, 52))
  _write_pairs(tmp_path, pairs)
  config = _folder_config(tmp_path, crop_size=32)
  originals = [images.to_unit_float(vis) for _, vis in pairs.values()]
  transforms = set()
  for batch in _take(fusion_data.make_train_dataset(config, seed=0, batch_size=3), 4):
    for vis, ir in zip(batch['vis'][..., 0], batch['ir'][..., 0]):
      np.testing.assert_allclose(ir, 1.0 - vis, atol=1e-6)
      # The crop is a 32x32 window of one original, under one of the 8 flip/transpose combinations.
      found = [(k, top, left) for original in originals
               for k, candidate in enumerate(_dihedral(vis))
               for top in range(40 - 31) for left in range(52 - 31)
               if np.array_equal(candidate, original[top:top + 32, left:left + 32])]
      assert found
      transforms.add(found[0][0])
  assert len(transforms) > 1


def test_images_smaller_than_the_crop_are_upscaled_together(tmp_path):
  _write_pairs(tmp_path, _complementary_pairs(np.random.default_rng(1), 2, (20, 30)))
  config = _folder_config(tmp_path, crop_size=32)
  for batch in _take(fusion_data.make_train_dataset(config, seed=0, batch_size=2), 2):
    assert batch['vis'].shape == (2, 32, 32, 1)
    # Bilinear weights sum to one, so resizing commutes with x -> 1 - x.
    np.testing.assert_allclose(batch['ir'], 1.0 - batch['vis'], atol=1e-5)


def test_eval_pairs(tmp_path):
  synthetic = fusion_data.make_eval_pairs(_synthetic_config(num_eval=3))
  train_scenes = fusion_data.make_source(_synthetic_config(), train=True)
  assert [p['vis'].shape for p in synthetic] == [(32, 32)] * 3
  assert all(not np.array_equal(p['ir'], train_scenes[i]['ir']) for i, p in enumerate(synthetic))

  rng = np.random.default_rng(2)
  _write_pairs(tmp_path / 'train', _complementary_pairs(rng, 2, (24, 24)))
  _write_pairs(tmp_path / 'test', _complementary_pairs(rng, 3, (20, 28)))
  pairs = fusion_data.make_eval_pairs(_folder_config(tmp_path, num_eval=0))
  assert [p['name'] for p in pairs] == ['p0', 'p1', 'p2']
  assert pairs[0].keys() == {'name', 'vis', 'ir'} and pairs[0]['vis'].shape == (20, 28)
  assert len(fusion_data.make_eval_pairs(_folder_config(tmp_path, num_eval=2))) == 2


def test_config_errors(tmp_path):
  with pytest.raises(ValueError, match='unknown data.name'):
    fusion_data.make_train_dataset(_synthetic_config(name='imagenet'), seed=0, batch_size=2)
  with pytest.raises(ValueError, match='not divisible'):
    fusion_data.make_train_dataset(_synthetic_config(), seed=0, batch_size=3, process_count=2)
  with pytest.raises(ValueError, match='data_dir'):
    fusion_data.make_train_dataset(_folder_config(''), seed=0, batch_size=2)
  with pytest.raises(ValueError, match="no 'test' split"):
    _write_pairs(tmp_path, _complementary_pairs(np.random.default_rng(3), 1, (8, 8)))
    fusion_data.make_eval_pairs(_folder_config(tmp_path))
  with pytest.raises(ValueError, match='tfds_name'):
    fusion_data.make_train_dataset(_synthetic_config(name='tfds'), seed=0, batch_size=2)


# --- folders of pairs: naming, bit depth and bad input ----------------------------------------------------------

def test_numbered_names_and_16_bit_images(tmp_path):
  ir16 = np.array([[0, 65535], [32768, 1000]], np.uint16)
  vis = np.array([[10, 20], [30, 40]], np.uint8)
  (tmp_path / 'ir').mkdir()
  (tmp_path / 'vi').mkdir()
  Image.fromarray(ir16).save(tmp_path / 'ir' / 'IR1.png')
  Image.fromarray(vis).save(tmp_path / 'vi' / 'VIS1.png')
  source = fusion_data.FolderPairs(tmp_path / 'ir', tmp_path / 'vi')
  pair = source[0]
  assert pair['name'] == '1'
  np.testing.assert_allclose(pair['ir'], ir16 / 65535.0, rtol=1e-6)
  np.testing.assert_allclose(pair['vis'], vis / 255.0, rtol=1e-6)


def _bad_folder(root: pathlib.Path) -> None:
  rng = np.random.default_rng(4)
  _write_pairs(root, _complementary_pairs(rng, 2, (16, 16)))                   # p0, p1: good.
  Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / 'ir' / 'lonely.png')  # No partner.
  Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / 'ir' / 'big.png')
  Image.fromarray(np.zeros((16, 20), np.uint8)).save(root / 'vi' / 'big.png')     # Size mismatch.
  Image.fromarray(np.zeros((16, 16), np.uint8)).save(root / 'ir' / 'broken.png')
  (root / 'vi' / 'broken.png').write_bytes(b'not a png at all')                  # Unreadable.


def test_unpaired_files_are_an_error_naming_them(tmp_path):
  _bad_folder(tmp_path)
  with pytest.raises(ValueError, match='lonely.png'):
    paired_folders.scan_folders(tmp_path / 'ir', tmp_path / 'vi', progress=False)


def test_bad_pairs_are_reported_together(tmp_path):
  _bad_folder(tmp_path)
  (tmp_path / 'ir' / 'lonely.png').unlink()
  with pytest.raises(ValueError) as error:
    paired_folders.scan_folders(tmp_path / 'ir', tmp_path / 'vi', progress=False)
  message = str(error.value)
  assert '2 bad pair(s)' in message and 'skip_bad' in message
  assert str(tmp_path / 'vi' / 'broken.png') in message
  assert str(tmp_path / 'ir' / 'big.png') in message and '16x16' in message and '20x16' in message


def test_skip_bad_leaves_out_and_reports(tmp_path):
  _bad_folder(tmp_path)
  config = _folder_config(tmp_path, skip_bad=True, crop_size=16)
  source = fusion_data.make_source(config, train=True)
  assert [p.name for p in source.pairs] == ['p0', 'p1']
  assert len(source.skipped) == 3
  for name in ('lonely.png', 'big.png', 'broken.png'):
    assert sum(name in f'{what}: {reason}' for what, reason in source.skipped) == 1
  batch = _take(fusion_data.make_train_dataset(config, seed=0, batch_size=2), 1)[0]
  np.testing.assert_allclose(batch['ir'], 1.0 - batch['vis'], atol=1e-6)


def test_folder_layout_errors(tmp_path):
  (tmp_path / 'ir').mkdir()
  with pytest.raises(ValueError, match='vi/'):
    paired_folders.pair_folders(tmp_path)
  (tmp_path / 'vi').mkdir()
  with pytest.raises(ValueError, match='no images'):
    paired_folders.scan_folders(tmp_path / 'ir', tmp_path / 'vi', progress=False)
  Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / 'ir' / 'a.png')
  (tmp_path / 'vi' / 'a.png').write_bytes(b'garbage')
  with pytest.raises(ValueError, match='no usable pairs'):
    paired_folders.scan_folders(tmp_path / 'ir', tmp_path / 'vi', skip_bad=True, progress=False)


# --- TFDS -------------------------------------------------------------------------------------------------------

def _tfds_source_folder(root: pathlib.Path) -> None:
  rng = np.random.default_rng(5)
  colour = rng.integers(0, 256, (18, 22, 3), dtype=np.uint8)
  _write_pairs(root / 'train', {'a': (rng.integers(0, 256, (18, 22), dtype=np.uint8), colour),
                                'b': (rng.integers(0, 256, (14, 10), dtype=np.uint8),
                                      rng.integers(0, 256, (14, 10), dtype=np.uint8))})
  _write_pairs(root / 'test', {'c': (np.stack([rng.integers(0, 256, (12, 16), dtype=np.uint8)] * 3, -1),
                                     rng.integers(0, 256, (12, 16), dtype=np.uint8))}, ext='.bmp')


def test_tfds_build_and_read_back_equal_the_folder(tmp_path):
  _tfds_source_folder(tmp_path / 'src')
  builder = tfds_fusion.build_dataset(tmp_path / 'src', name='tiny_pairs', data_dir=tmp_path / 'tfds')
  assert {s: builder.info.splits[s].num_examples for s in ('train', 'test')} == {'train': 2, 'test': 1}
  assert list((tmp_path / 'tfds').rglob('*.array_record*'))

  # Plain tfds.data_source (8-bit PNGs decode without TensorFlow).
  raw = tfds.data_source('tiny_pairs', split='train', data_dir=str(tmp_path / 'tfds'))
  record = {r['name'].decode() if isinstance(r['name'], bytes) else r['name']: r for r in raw}['a']
  assert record['ir'].shape == (18, 22, 1) and record['vis'].shape == (18, 22, 3)

  for split in ('train', 'test'):
    source = tfds_fusion.PairSource('tiny_pairs', split, tmp_path / 'tfds')
    folder = fusion_data.FolderPairs(*paired_folders.pair_folders(tmp_path / 'src' / split))
    expected = {folder[i]['name']: folder[i] for i in range(len(folder))}
    assert len(source) == len(expected)
    for i in range(len(source)):
      got = source[i]
      np.testing.assert_array_equal(got['ir'], expected[got['name']]['ir'])
      np.testing.assert_array_equal(got['vis'], expected[got['name']]['vis'])

  config = fusion_data.default_data_config()
  config.update(dict(name='tfds', tfds_name='tiny_pairs', tfds_data_dir=str(tmp_path / 'tfds'), crop_size=8,
                     threads=1))
  batch = _take(fusion_data.make_train_dataset(config, seed=0, batch_size=2), 1)[0]
  assert batch['vis'].shape == (2, 8, 8, 1)
  assert [p['name'] for p in fusion_data.make_eval_pairs(config)] == ['c']


def test_tfds_16_bit_and_bad_input(tmp_path):
  src = tmp_path / 'src'
  ir16 = np.arange(48, dtype=np.uint16).reshape(6, 8) * 1300
  vis = np.full((6, 8), 77, np.uint8)
  _write_pairs(src, {'hot': (ir16, vis)})
  with pytest.raises(ValueError, match=r'hot\.png: 16-bit image .* ir_bit_depth=8'):
    tfds_fusion.build_dataset(src, name='sixteen', data_dir=tmp_path / 'fail')
  builder = tfds_fusion.build_dataset(src, name='sixteen', data_dir=tmp_path / 'ok', ir_bit_depth=16)
  pair = tfds_fusion.PairSource('sixteen', 'train', tmp_path / 'ok')[0]
  np.testing.assert_allclose(pair['ir'], ir16 / 65535.0, rtol=1e-6)
  assert builder.skipped == []

  _bad_folder(src)
  skipping = tfds_fusion.build_dataset(src, name='skipping', data_dir=tmp_path / 'skip', skip_bad=True)
  assert skipping.info.splits['train'].num_examples == 2   # p0, p1; 'hot' is 16-bit in an 8-bit build.
  assert len(skipping.skipped) == 4 and any('hot.png' in reason for _, reason in skipping.skipped)
  with pytest.raises(ValueError, match='lower_snake_case'):
    tfds_fusion.make_builder(src, name='My-Data', data_dir=tmp_path / 'x')


def test_build_tfds_binary(tmp_path, repo_root):
  _tfds_source_folder(tmp_path / 'src')
  # As the README writes it: after '=' the shell leaves '~' alone, so the binary expands it.
  command = [sys.executable, '-m', 'launch.build_tfds', f'--source_dir={tmp_path / "src"}', '--name=cli_pairs',
             '--data_dir=~/tfds']
  env = dict(os.environ, HOME=str(tmp_path))
  result = subprocess.run(command, cwd=repo_root, env=env, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert len(tfds_fusion.PairSource('cli_pairs', 'test', tmp_path / 'tfds')) == 1
  assert not (repo_root / '~').exists()
  result = subprocess.run(command[:3] + [f'--source_dir={tmp_path / "missing"}', '--name=x'], cwd=repo_root,
                          env=env, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert [line for line in result.stderr.splitlines() if line.startswith('Error:')] == [
      f'Error: {tmp_path / "missing"}: found neither ir/ + vi/ nor split folders (e.g. train/, test/) that hold them']


# --- real data --------------------------------------------------------------------------------------------------

def test_msrs_folder(shared_dir):
  msrs = shared_dir / 'data' / 'ivif' / 'msrs'
  config = _folder_config(msrs, crop_size=64, num_eval=2)
  batches = _take(fusion_data.make_train_dataset(config, seed=0, batch_size=4, process_index=1, process_count=2), 2)
  for batch in batches:
    assert batch['vis'].shape == batch['ir'].shape == (2, 64, 64, 1)
    assert 0.0 <= batch['ir'].min() and batch['vis'].max() <= 1.0 and batch['vis'].std() > 0.01
  pairs = fusion_data.make_eval_pairs(config)
  assert len(pairs) == 2 and pairs[0]['vis'].shape == pairs[0]['ir'].shape == (480, 640)
  # The visible Y of a colour MSRS image is its BT.601 luma.
  rgb = images.to_unit_float(images.read_image(msrs / 'test' / 'vi' / f'{pairs[0]["name"]}.png'))
  np.testing.assert_allclose(pairs[0]['vis'], rgb @ np.array([0.299, 0.587, 0.114], np.float32), atol=1e-6)
