"""File fusion (launch.fusion_files: single and folder mode, colour, bit depths, bad input), the fuse binary's
error policy, and fusing with the imported release weights."""
import pathlib
import subprocess
import sys

import jax
import numpy as np
from PIL import Image
import pytest

from cfi_jax.model import ISFuse
from input_pipeline import errors
from input_pipeline import images
from cfi_test_utils import random_variables
from launch import checkpoints
from launch import fusion_files
from launch import release_weights

SIZE = (24, 32)  # H, W shared by most tests so the model compiles once.
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# The tiny model's output everywhere: its final convolution has zero weights and this sigmoid(bias), so what each
# file holds is known without running the code under test (100.4 / 255 rounds to level 100).
CONSTANT = 100.4 / 255
CONSTANT_LEVEL = 100


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  """(checkpoint dir, model, variables) of a features=8 ISFuse whose output is CONSTANT everywhere."""
  model = ISFuse(features=8)
  variables = random_variables(model, seed=1)
  final = variables['params']['final']
  final['kernel'] = np.zeros_like(final['kernel'])
  final['bias'] = np.full_like(final['bias'], np.log(CONSTANT / (1 - CONSTANT)))
  directory = tmp_path_factory.mktemp('tiny') / 'ckpt'
  checkpoints.save_inference_checkpoint(directory, variables, {'model': 'cfi', 'model_config': {'features': 8}})
  model, variables = fusion_files.load_model(directory)
  return directory, model, variables


def _gray(size=SIZE, seed=0, dtype=np.uint8):
  high = np.iinfo(dtype).max
  return np.random.default_rng(seed).integers(0, high + 1, size, dtype)


def _colour(size=SIZE, seed=0):
  # Mid-range colours so replacing Y never clips RGB and Cr/Cb survive the round trip.
  return (np.random.default_rng(seed).uniform(0.35, 0.65, size + (3,)) * 255).round().astype(np.uint8)


def _write(path: pathlib.Path, array: np.ndarray) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)
  return path


def _fuse(tiny, ir, vis, out, resize_to=None):
  _, model, variables = tiny
  fusion_files.fuse_file(model, variables, ir, vis, out, resize_to)


def _fuse_folder(tiny, ir_dir, vis_dir, out_dir, skip_bad=False):
  _, model, variables = tiny
  return fusion_files.fuse_folder(model, variables, str(ir_dir), str(vis_dir), str(out_dir), None, skip_bad)


def test_colour_output_keeps_visible_chroma(tiny, tmp_path):
  ir = _write(tmp_path / 'ir.png', _gray())
  vis_rgb = _colour()
  vis = _write(tmp_path / 'vis.png', vis_rgb)
  _fuse(tiny, ir, vis, tmp_path / 'out.png')
  out = images.read_image(tmp_path / 'out.png')
  assert out.shape == SIZE + (3,)
  out_ycrcb = images.rgb_to_ycrcb(images.to_unit_float(out))
  vis_ycrcb = images.rgb_to_ycrcb(images.to_unit_float(vis_rgb))
  # 8-bit RGB rounding moves Y and Cr/Cb by at most about one level.
  np.testing.assert_allclose(out_ycrcb[..., 0] * 255, CONSTANT_LEVEL, atol=1.0)
  np.testing.assert_allclose(out_ycrcb[..., 1:], vis_ycrcb[..., 1:], atol=1.5 / 255)


def test_gray_visible_gives_gray_output(tiny, tmp_path):
  ir = _write(tmp_path / 'ir.jpg', _gray(seed=1))
  vis = _write(tmp_path / 'vis.bmp', _gray(seed=2))
  _fuse(tiny, ir, vis, tmp_path / 'out.png')
  np.testing.assert_array_equal(images.read_image(tmp_path / 'out.png'), np.full(SIZE, CONSTANT_LEVEL, np.uint8))


def test_16bit_ir_and_rgba_visible_match_8bit_inputs(tmp_path):
  # A model with random weights: the output depends on every input pixel.
  model = ISFuse(features=8)
  variables = random_variables(model, seed=2)
  ir8, rgb = _gray(seed=3), _colour(seed=4)
  ir8_path = _write(tmp_path / 'ir8.png', ir8)
  rgb_path = _write(tmp_path / 'rgb.png', rgb)
  fusion_files.fuse_file(model, variables, ir8_path, rgb_path, tmp_path / 'out8.png', None)
  reference = images.read_image(tmp_path / 'out8.png')
  # x * 257 / 65535 == x / 255, so a 16-bit copy of the IR must fuse to the same image.
  ir16 = ir8.astype(np.uint16) * 257
  rgba = np.concatenate([rgb, np.full(SIZE + (1,), 77, np.uint8)], axis=-1)
  rgba_path = _write(tmp_path / 'rgba.png', rgba)
  for ext in ('png', 'tif'):
    fusion_files.fuse_file(model, variables, _write(tmp_path / f'ir16.{ext}', ir16), rgba_path,
                           tmp_path / f'out_{ext}.png', None)
    np.testing.assert_array_equal(images.read_image(tmp_path / f'out_{ext}.png'), reference)


def test_mismatched_sizes_error_and_resize_to(tiny, tmp_path):
  ir = _write(tmp_path / 'thermal.png', _gray(size=SIZE))
  vis = _write(tmp_path / 'visible.png', _colour(size=(20, 28)))
  with pytest.raises(fusion_files.PairError, match=r'thermal\.png is 32x24.*visible\.png is 28x20'):
    _fuse(tiny, ir, vis, tmp_path / 'out.png')
  assert not (tmp_path / 'out.png').exists()
  _fuse(tiny, ir, vis, tmp_path / 'to_ir.png', resize_to='ir')
  assert images.read_image(tmp_path / 'to_ir.png').shape == SIZE + (3,)
  _fuse(tiny, ir, vis, tmp_path / 'to_vis.png', resize_to='vis')
  assert images.read_image(tmp_path / 'to_vis.png').shape == (20, 28, 3)


def test_too_small_pair_names_files_size_and_minimum(tiny, tmp_path):
  ir = _write(tmp_path / 'ir' / 'tiny.png', _gray(size=(3, 3)))
  vis = _write(tmp_path / 'vi' / 'tiny.png', _gray(size=(3, 3)))
  with pytest.raises(fusion_files.PairError, match=r'ir/tiny\.png / .*vi/tiny\.png is 3x3 .*at least 4x4'):
    _fuse(tiny, ir, vis, tmp_path / 'out.png')
  _write(tmp_path / 'ir' / 'ok.png', _gray())
  _write(tmp_path / 'vi' / 'ok.png', _gray(seed=1))
  skipped = _fuse_folder(tiny, tmp_path / 'ir', tmp_path / 'vi', tmp_path / 'out', skip_bad=True)
  assert [name for name, _ in skipped] == ['tiny'] and 'at least 4x4' in skipped[0][1]
  assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['ok.png']


def test_unreadable_file_is_named(tiny, tmp_path):
  ir = _write(tmp_path / 'ir.png', _gray())
  bad = tmp_path / 'corrupt.png'
  bad.write_bytes(b'\x89PNG garbage')
  with pytest.raises(fusion_files.PairError, match='corrupt.png'):
    _fuse(tiny, ir, bad, tmp_path / 'out.png')


def test_folder_mode_skip_bad(tiny, tmp_path):
  for n in (1, 2, 3):
    _write(tmp_path / 'ir' / f'IR{n}.png', _gray(seed=n))
    _write(tmp_path / 'vis' / f'VIS{n}.png', _colour(seed=n))
  (tmp_path / 'vis' / 'VIS2.png').write_bytes(b'broken')
  with pytest.raises(fusion_files.PairError, match='VIS2.png'):
    _fuse_folder(tiny, tmp_path / 'ir', tmp_path / 'vis', tmp_path / 'out')
  assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['1.png']  # Written before the error: kept.
  _write(tmp_path / 'ir' / 'IR4.png', _gray(seed=4))  # No visible partner.
  with pytest.raises(errors.DataConfigError, match=r'IR4\.png: no visible partner'):
    _fuse_folder(tiny, tmp_path / 'ir', tmp_path / 'vis', tmp_path / 'out')
  skipped = _fuse_folder(tiny, tmp_path / 'ir', tmp_path / 'vis', tmp_path / 'out', skip_bad=True)
  assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['1.png', '3.png']
  assert [(pathlib.Path(name).name, reason.split(' ')[0]) for name, reason in skipped] == [
      ('IR4.png', 'no'), ('2', str(tmp_path / 'vis' / 'VIS2.png') + ':')]
  out_y = images.rgb_to_ycrcb(images.to_unit_float(images.read_image(tmp_path / 'out' / '3.png')))[..., 0]
  np.testing.assert_allclose(out_y * 255, CONSTANT_LEVEL, atol=1.0)


def test_load_model_refuses_other_models_and_non_checkpoints(tmp_path):
  checkpoints.save_inference_checkpoint(tmp_path / 'dfc', random_variables(ISFuse(features=8)),
                                        {'model': 'dfc', 'model_config': {}})
  with pytest.raises(checkpoints.CheckpointError, match=r"holds a 'dfc' model, not a CFI one"):
    fusion_files.load_model(tmp_path / 'dfc')
  (tmp_path / 'photos').mkdir()
  with pytest.raises(checkpoints.CheckpointNotFoundError, match='photos holds no checkpoint steps'):
    fusion_files.load_model(tmp_path / 'photos')


def test_checkpoints_that_name_the_model_isfuse_still_load(tiny, tmp_path):
  # Written before the family was named 'cfi' everywhere (launch.import_isfuse, launch.train with model 'isfuse').
  _, model, variables = tiny
  old_config = {'model': 'isfuse', 'model_config': {'features': 8}}
  checkpoints.save_inference_checkpoint(tmp_path / 'old', variables, old_config)
  old_model, old_variables = fusion_files.load_model(tmp_path / 'old')
  assert old_model == model
  jax.tree.map(np.testing.assert_array_equal, old_variables, variables)


def _fuse_binary(*args):
  return subprocess.run([sys.executable, '-m', 'launch.fuse', *args], capture_output=True, text=True, cwd=REPO_ROOT,
                        check=False)


def test_command_line_folder_mode_is_quiet(tiny, tmp_path):
  for name in ('a', 'b'):
    _write(tmp_path / 'ir' / f'{name}.png', _gray(seed=5))
    _write(tmp_path / 'vi' / f'{name}.jpg', _gray(seed=6))
  args = [f'--checkpoint={tiny[0]}', f'--ir_dir={tmp_path / "ir"}', f'--vis_dir={tmp_path / "vi"}',
          f'--out_dir={tmp_path / "out"}']
  result = _fuse_binary(*args)
  assert result.returncode == 0, result.stderr[-2000:]
  assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['a.png', 'b.png']
  assert 'pair/s' in result.stderr  # tqdm progress bar with its rate.
  assert 'orbax' not in result.stderr and 'Wrote fused images' in result.stderr
  # --verbosity brings the libraries' INFO lines back.
  assert 'orbax' in _fuse_binary(*args, '--verbosity=0').stderr


def test_command_line_errors_are_one_line(tiny, tmp_path):
  (tmp_path / 'photos').mkdir()
  _write(tmp_path / 'ir.png', _gray(size=(3, 3)))
  _write(tmp_path / 'vi.png', _gray(size=(3, 3)))
  for args, message in [
      ([f'--checkpoint={tmp_path / "photos"}', '--ir=a.png', '--vis=b.png', '--out=c.png'], 'no checkpoint steps'),
      ([f'--checkpoint={tiny[0]}', f'--ir={tmp_path / "ir.png"}', f'--vis={tmp_path / "vi.png"}',
        f'--out={tmp_path / "out.png"}'], 'at least 4x4')]:
    result = _fuse_binary(*args)
    assert result.returncode == 1
    assert 'Traceback' not in result.stderr
    errors_printed = [line for line in result.stderr.splitlines() if line.startswith('Error: ')]
    assert len(errors_printed) == 1 and message in errors_printed[0], result.stderr[-2000:]


def test_fuse_with_imported_release_weights(shared_dir, tmp_path):
  pytest.importorskip('torch')
  release_weights.import_checkpoint(str(shared_dir / 'isfuse_reference' / 'best.pth'), str(tmp_path / 'ckpt'))
  data = shared_dir / 'data' / 'ivif' / 'roadscene' / 'test'
  model, variables = fusion_files.load_model(tmp_path / 'ckpt')
  fusion_files.fuse_file(model, variables, data / 'ir' / '1.jpg', data / 'vi' / '1.jpg', tmp_path / 'out.png', None)
  out = images.read_image(tmp_path / 'out.png').astype(int)
  # The release's quantised output for this pair, from the PyTorch reference output.
  expected = images.quantize(np.load(shared_dir / 'isfuse_reference' / 'outputs' / '1.npy')).astype(int)
  assert out.shape == expected.shape
  assert np.abs(out - expected).max() <= 1 and np.mean(out != expected) < 1e-3
