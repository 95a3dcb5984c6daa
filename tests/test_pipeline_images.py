"""Image reading, BT.601 colour conversion, pairing and output quantisation."""
import pathlib

import numpy as np
from PIL import Image
import pytest

from input_pipeline import images


def _write(path: pathlib.Path, array: np.ndarray) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)
  return path


def test_rgb_to_ycrcb_by_hand():
  # OpenCV float formulas: Y = .299R + .587G + .114B, Cr = .713(R - Y) + .5, Cb = .564(B - Y) + .5.
  ycrcb = images.rgb_to_ycrcb(np.array([[[1.0, 0.0, 0.0], [0.2, 0.4, 0.6]]], np.float32))
  y2 = 0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6
  expected = [[[0.299, 0.713 * 0.701 + 0.5, 0.564 * -0.299 + 0.5],
               [y2, 0.713 * (0.2 - y2) + 0.5, 0.564 * (0.6 - y2) + 0.5]]]
  np.testing.assert_allclose(ycrcb, expected, atol=1e-6)


def test_ycrcb_round_trip():
  rgb = np.random.default_rng(0).random((5, 7, 3), np.float32)
  # OpenCV's rounded 3-digit inverse coefficients make the round trip exact only to about 1e-3.
  np.testing.assert_allclose(images.ycrcb_to_rgb(images.rgb_to_ycrcb(rgb)), rgb, atol=2e-3)


def test_read_modes(tmp_path):
  rng = np.random.default_rng(1)
  gray = rng.integers(0, 256, (6, 5), np.uint8)
  rgb = rng.integers(0, 256, (6, 5, 3), np.uint8)
  rgba = np.concatenate([rgb, rng.integers(0, 256, (6, 5, 1), np.uint8)], axis=-1)
  deep = rng.integers(0, 65536, (6, 5), np.uint16)
  np.testing.assert_array_equal(images.read_image(_write(tmp_path / 'g.bmp', gray)), gray)
  np.testing.assert_array_equal(images.read_image(_write(tmp_path / 'c.png', rgb)), rgb)
  np.testing.assert_array_equal(images.read_image(_write(tmp_path / 'a.png', rgba)), rgb)
  for ext in ('png', 'tif'):
    read = images.read_image(_write(tmp_path / f'd.{ext}', deep))
    assert read.dtype == np.uint16
    np.testing.assert_array_equal(read, deep)
  np.testing.assert_allclose(images.load_ir(tmp_path / 'd.png'), deep / 65535, atol=1e-7)
  assert images.read_image(_write(tmp_path / 'j.jpg', rgb)).shape == (6, 5, 3)


def test_load_vis_colour_and_gray(tmp_path):
  rgb = np.random.default_rng(2).integers(0, 256, (4, 3, 3), np.uint8)
  y, crcb = images.load_vis(_write(tmp_path / 'c.png', rgb))
  np.testing.assert_allclose(y, rgb @ np.array([0.299, 0.587, 0.114]) / 255, atol=1e-6)
  assert crcb.shape == (4, 3, 2)
  y, crcb = images.load_vis(_write(tmp_path / 'g.png', rgb[..., 0]))
  assert crcb is None
  np.testing.assert_allclose(y, rgb[..., 0] / 255, atol=1e-7)
  # Three equal channels (as in TNO's PNGs) are gray.
  assert images.load_vis(_write(tmp_path / 'e.png', np.repeat(rgb[..., :1], 3, axis=-1)))[1] is None


def test_unreadable_files_name_the_file(tmp_path):
  bad = tmp_path / 'broken.png'
  bad.write_bytes(b'not an image')
  with pytest.raises(images.ImageReadError, match='broken.png'):
    images.read_image(bad)
  with pytest.raises(images.ImageReadError, match='missing.png.*not found'):
    images.load_ir(tmp_path / 'missing.png')
  truncated = tmp_path / 'cut.png'
  _write(truncated, np.zeros((64, 64), np.uint8) + np.arange(64, dtype=np.uint8))
  truncated.write_bytes(truncated.read_bytes()[:60])
  with pytest.raises(images.ImageReadError, match='cut.png'):
    images.read_image(truncated)


def test_find_pairs_by_stem_and_numbered_names(tmp_path):
  img = np.zeros((2, 2), np.uint8)
  for name in ('10.png', '2.jpg', 'notes.txt'):
    (tmp_path / 'ir').mkdir(exist_ok=True)
    (tmp_path / 'ir' / name).write_bytes(b'')
  for name in ('10.png', '2.png'):
    _write(tmp_path / 'vi' / name, img)
  pairs = images.find_pairs(tmp_path / 'ir', tmp_path / 'vi')
  assert [(p.name, p.ir_path.name, p.vis_path.name) for p in pairs] == [('2', '2.jpg', '2.png'),
                                                                       ('10', '10.png', '10.png')]
  for name in ('IR1.png', 'IR12.png'):
    _write(tmp_path / 'a' / name, img)
  for name in ('VIS1.png', 'VIS12.png'):
    _write(tmp_path / 'b' / name, img)
  assert [p.name for p in images.find_pairs(tmp_path / 'a', tmp_path / 'b')] == ['1', '12']


def _write_one_pair_and_two_strays(tmp_path):
  """ir/ and vi/ with the pair '1' plus only_ir.png and only_vis.jpg, each without a partner."""
  img = np.zeros((2, 2), np.uint8)
  for name in ('1.png', 'only_ir.png'):
    _write(tmp_path / 'ir' / name, img)
  for name in ('1.png', 'only_vis.jpg'):
    _write(tmp_path / 'vi' / name, img)


def test_find_pairs_lists_unpaired_files(tmp_path):
  _write_one_pair_and_two_strays(tmp_path)
  with pytest.raises(ValueError, match=r'(?s)only_ir\.png.*only_vis\.jpg'):
    images.find_pairs(tmp_path / 'ir', tmp_path / 'vi')


def test_quantize_and_save(tmp_path):
  y = np.array([[-0.5, 0.0, 0.5 / 255, 1.5 / 255, 0.5, 2.0]], np.float32)
  # Clamp, x255, round half to even.
  np.testing.assert_array_equal(images.quantize(y), [[0, 0, 0, 2, 128, 255]])
  images.save_fused(tmp_path / 'gray.png', y)
  np.testing.assert_array_equal(images.read_image(tmp_path / 'gray.png'), images.quantize(y))
  crcb = np.full(y.shape + (2,), 0.5, np.float32)  # Neutral chroma -> R = G = B = Y.
  images.save_fused(tmp_path / 'out' / 'colour.png', y, crcb)
  colour = images.read_image(tmp_path / 'out' / 'colour.png')
  assert colour.shape == y.shape + (3,)
  np.testing.assert_array_equal(colour, np.repeat(images.quantize(y)[..., None], 3, axis=-1))


def test_match_pairs_returns_unpaired_files_instead_of_raising(tmp_path):
  _write_one_pair_and_two_strays(tmp_path)
  pairs, unpaired = images.match_pairs(tmp_path / 'ir', tmp_path / 'vi')
  assert [p.name for p in pairs] == ['1']
  assert len(unpaired) == 2
  assert unpaired == [(str(tmp_path / 'ir' / 'only_ir.png'), f'no visible partner in {tmp_path / "vi"}'),
                      (str(tmp_path / 'vi' / 'only_vis.jpg'), f'no infrared partner in {tmp_path / "ir"}')]
  (tmp_path / 'empty_a').mkdir()
  (tmp_path / 'empty_b').mkdir()
  with pytest.raises(ValueError, match='no images'):
    images.match_pairs(tmp_path / 'empty_a', tmp_path / 'empty_b')


def test_center_crop_takes_the_middle_window_flooring_odd_margins():
  image = np.arange(5 * 8).reshape(5, 8)
  np.testing.assert_array_equal(images.center_crop(image, 3, 3), image[1:4, 2:5])
  assert images.center_box((512, 1024, 3), 512, 512) == (0, 256, 512, 512)


def test_resize_image_works_per_channel():
  rgb = np.random.default_rng(0).random((9, 12, 3), np.float32)
  resized = images.resize_image(rgb, (4, 5))
  assert resized.shape == (4, 5, 3)
  for c in range(3):
    np.testing.assert_array_equal(resized[..., c], images.resize_image(rgb[..., c], (4, 5)))
  np.testing.assert_allclose(images.resize_image(np.full((9, 12), 0.25, np.float32), (4, 5)), 0.25, atol=1e-6)


def test_image_shape_from_the_header_matches_read_image(tmp_path):
  rgb = np.zeros((6, 5, 3), np.uint8)
  _write(tmp_path / 'plain.png', rgb)
  exif = Image.Exif()
  exif[0x0112] = 6  # Rotated 90 degrees: read_image returns 5 rows of 6.
  Image.fromarray(rgb).save(tmp_path / 'rotated.jpg', exif=exif)
  (tmp_path / 'broken.png').write_bytes(b'not an image')
  for name in ('plain.png', 'rotated.jpg'):
    assert images.image_shape(tmp_path / name) == images.read_image(tmp_path / name).shape[:2]
  assert images.image_shape(tmp_path / 'rotated.jpg') == (5, 6)
  assert images.image_shape(tmp_path / 'broken.png') is None
  assert images.image_shape(tmp_path / 'missing.png') is None
