"""The fuse binary (single and folder mode, colour, bit depths, bad input) and the weight importer's checks."""
import logging
import pathlib
import subprocess
import sys

from absl import app
from absl.testing import flagsaver
import numpy as np
from PIL import Image
import pytest

from cfi_jax import inference
from cfi_jax import torch_import
from cfi_jax.model import ISFuse
from input_pipeline import images
from isfuse_test_utils import random_variables
from launch import checkpoints
from launch import fuse
from launch import import_isfuse

SIZE = (24, 32)  # H, W shared by most tests so the model compiles once.


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  """(checkpoint dir, model, variables) of a randomly initialised features=8 ISFuse."""
  model = ISFuse(features=8)
  directory = tmp_path_factory.mktemp('tiny') / 'ckpt'
  checkpoints.save_inference_checkpoint(directory, random_variables(model, seed=1),
                                        {'model': 'isfuse', 'model_config': {'features': 8}})
  variables, _ = checkpoints.restore_model_variables(directory)
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


def _run(checkpoint, **flags):
  with flagsaver.flagsaver(checkpoint=str(checkpoint), **{k: str(v) if isinstance(v, pathlib.Path) else v
                                                          for k, v in flags.items()}):
    fuse.main(['fuse'])


def _expected_y(tiny, ir_path, vis_path):
  _, model, variables = tiny
  return images.quantize(inference.fuse_luma(model, variables, images.load_vis(vis_path)[0],
                                             images.load_ir(ir_path)))


def test_colour_output_keeps_visible_chroma(tiny, tmp_path):
  ir = _write(tmp_path / 'ir.png', _gray())
  vis_rgb = _colour()
  vis = _write(tmp_path / 'vis.png', vis_rgb)
  _run(tiny[0], ir=ir, vis=vis, out=tmp_path / 'out.png')
  out = images.read_image(tmp_path / 'out.png')
  assert out.shape == SIZE + (3,)
  out_ycrcb = images.rgb_to_ycrcb(images.to_unit_float(out))
  vis_ycrcb = images.rgb_to_ycrcb(images.to_unit_float(vis_rgb))
  # 8-bit RGB rounding moves Y and Cr/Cb by at most about one level.
  np.testing.assert_allclose(out_ycrcb[..., 0] * 255, _expected_y(tiny, ir, vis), atol=1.0)
  np.testing.assert_allclose(out_ycrcb[..., 1:], vis_ycrcb[..., 1:], atol=1.5 / 255)


def test_gray_visible_gives_gray_output(tiny, tmp_path):
  ir = _write(tmp_path / 'ir.jpg', _gray(seed=1))
  vis = _write(tmp_path / 'vis.bmp', _gray(seed=2))
  _run(tiny[0], ir=ir, vis=vis, out=tmp_path / 'out.png')
  np.testing.assert_array_equal(images.read_image(tmp_path / 'out.png'), _expected_y(tiny, ir, vis))


def test_16bit_ir_and_rgba_visible_match_8bit_inputs(tiny, tmp_path):
  ir8, rgb = _gray(seed=3), _colour(seed=4)
  ir8_path = _write(tmp_path / 'ir8.png', ir8)
  rgb_path = _write(tmp_path / 'rgb.png', rgb)
  _run(tiny[0], ir=ir8_path, vis=rgb_path, out=tmp_path / 'out8.png')
  reference = images.read_image(tmp_path / 'out8.png')
  # x * 257 / 65535 == x / 255, so a 16-bit copy of the IR must fuse to the same image.
  ir16 = ir8.astype(np.uint16) * 257
  rgba = np.concatenate([rgb, np.full(SIZE + (1,), 77, np.uint8)], axis=-1)
  rgba_path = _write(tmp_path / 'rgba.png', rgba)
  for ext in ('png', 'tif'):
    _run(tiny[0], ir=_write(tmp_path / f'ir16.{ext}', ir16), vis=rgba_path, out=tmp_path / f'out_{ext}.png')
    np.testing.assert_array_equal(images.read_image(tmp_path / f'out_{ext}.png'), reference)


def test_mismatched_sizes_error_and_resize_to(tiny, tmp_path):
  ir = _write(tmp_path / 'thermal.png', _gray(size=SIZE))
  vis = _write(tmp_path / 'visible.png', _colour(size=(20, 28)))
  with pytest.raises(SystemExit, match=r'thermal\.png is 32x24.*visible\.png is 28x20'):
    _run(tiny[0], ir=ir, vis=vis, out=tmp_path / 'out.png')
  assert not (tmp_path / 'out.png').exists()
  _run(tiny[0], ir=ir, vis=vis, out=tmp_path / 'to_ir.png', resize_to='ir')
  assert images.read_image(tmp_path / 'to_ir.png').shape == SIZE + (3,)
  _run(tiny[0], ir=ir, vis=vis, out=tmp_path / 'to_vis.png', resize_to='vis')
  assert images.read_image(tmp_path / 'to_vis.png').shape == (20, 28, 3)


def test_unreadable_file_is_named(tiny, tmp_path):
  ir = _write(tmp_path / 'ir.png', _gray())
  bad = tmp_path / 'corrupt.png'
  bad.write_bytes(b'\x89PNG garbage')
  with pytest.raises(SystemExit, match='corrupt.png'):
    _run(tiny[0], ir=ir, vis=bad, out=tmp_path / 'out.png')
  with pytest.raises(app.UsageError):
    _run(tiny[0], ir=ir, vis=bad, out=tmp_path / 'out.png', ir_dir=tmp_path)


def test_folder_mode_skip_bad(tiny, tmp_path, caplog):
  for n in (1, 2, 3):
    _write(tmp_path / 'ir' / f'IR{n}.png', _gray(seed=n))
    _write(tmp_path / 'vis' / f'VIS{n}.png', _colour(seed=n))
  (tmp_path / 'vis' / 'VIS2.png').write_bytes(b'broken')
  dirs = {'ir_dir': tmp_path / 'ir', 'vis_dir': tmp_path / 'vis', 'out_dir': tmp_path / 'out'}
  with pytest.raises(SystemExit, match='VIS2.png'):
    _run(tiny[0], **dirs)
  assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['1.png']  # Written before the error: kept.
  with caplog.at_level(logging.WARNING):
    _run(tiny[0], skip_bad=True, **dirs)
  assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['1.png', '3.png']
  assert 'Skipped 1 pair(s)' in caplog.text and 'VIS2.png' in caplog.text
  out_y = images.rgb_to_ycrcb(images.to_unit_float(images.read_image(tmp_path / 'out' / '3.png')))[..., 0]
  expected = _expected_y(tiny, tmp_path / 'ir' / 'IR3.png', tmp_path / 'vis' / 'VIS3.png')
  np.testing.assert_allclose(out_y * 255, expected, atol=1.0)


def test_command_line_folder_mode(tiny, tmp_path):
  for name in ('a', 'b'):
    _write(tmp_path / 'ir' / f'{name}.png', _gray(seed=5))
    _write(tmp_path / 'vi' / f'{name}.jpg', _gray(seed=6))
  result = subprocess.run(
      [sys.executable, '-m', 'launch.fuse', f'--checkpoint={tiny[0]}', f'--ir_dir={tmp_path / "ir"}',
       f'--vis_dir={tmp_path / "vi"}', f'--out_dir={tmp_path / "out"}'],
      capture_output=True, text=True, cwd=pathlib.Path(__file__).resolve().parents[1], check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['a.png', 'b.png']
  assert 'pair/s' in result.stderr  # tqdm progress bar with its rate.


@pytest.fixture(scope='module')
def release_state_dict(shared_dir):
  pytest.importorskip('torch')
  return import_isfuse.load_torch_state_dict(str(shared_dir / 'isfuse_reference' / 'best.pth'))


def test_importer_names_key_and_shape_mismatches(release_state_dict, tmp_path):
  torch = pytest.importorskip('torch')
  state = {k: torch.from_numpy(v) for k, v in release_state_dict.items()}
  state['cfi3.extra.weight'] = torch.zeros(3)
  state['cfi4.q_v.weight'] = torch.zeros(32, 16, 1, 1)
  del state['final_decoder.0.bias']
  torch.save(state, tmp_path / 'bad.pth')
  with pytest.raises(SystemExit) as error:
    import_isfuse.import_checkpoint(str(tmp_path / 'bad.pth'), str(tmp_path / 'out'))
  message = str(error.value)
  assert 'bad.pth' in message and "'cfi3.extra.weight'" in message
  assert "'cfi4.q_v.weight': checkpoint (32, 16, 1, 1)" in message and '(1, 1, 32, 32)' in message
  assert 'final/bias' in message
  assert not (tmp_path / 'out').exists()


def test_importer_reports_unused_modules(release_state_dict):
  _, config, ignored = import_isfuse.import_state_dict(release_state_dict)
  assert ignored == list(torch_import.UNUSED_MODULES)
  assert config['model_config']['features'] == 32


def test_fuse_with_imported_release_weights(release_state_dict, shared_dir, tmp_path):
  import_isfuse.import_checkpoint(str(shared_dir / 'isfuse_reference' / 'best.pth'), str(tmp_path / 'ckpt'))
  data = shared_dir / 'data' / 'ivif' / 'roadscene' / 'test'
  _run(tmp_path / 'ckpt', ir=data / 'ir' / '1.jpg', vis=data / 'vi' / '1.jpg', out=tmp_path / 'out.png')
  out = images.read_image(tmp_path / 'out.png').astype(int)
  # The release's quantised output for this pair, from the PyTorch reference output.
  expected = images.quantize(np.load(shared_dir / 'isfuse_reference' / 'outputs' / '1.npy')).astype(int)
  assert out.shape == expected.shape
  assert np.abs(out - expected).max() <= 1 and np.mean(out != expected) < 1e-3


def test_too_small_pair_is_named_and_skipped(tiny, tmp_path, caplog):
  _write(tmp_path / 'ir' / 'small.png', _gray(size=(3, 3)))
  _write(tmp_path / 'vis' / 'small.png', _gray(size=(3, 3)))
  _write(tmp_path / 'ir' / 'ok.png', _gray(seed=1))
  _write(tmp_path / 'vis' / 'ok.png', _gray(seed=2))
  dirs = {'ir_dir': tmp_path / 'ir', 'vis_dir': tmp_path / 'vis', 'out_dir': tmp_path / 'out'}
  with pytest.raises(SystemExit, match=r'small\.png.*3x3 \(WxH\); ISFuse needs at least 4x4'):
    _run(tiny[0], **dirs)
  with caplog.at_level(logging.WARNING):
    _run(tiny[0], skip_bad=True, **dirs)
  assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['ok.png']
  assert 'Skipped 1 pair(s)' in caplog.text and 'small: ' in caplog.text and 'at least 4x4' in caplog.text
