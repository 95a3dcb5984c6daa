"""The one path for pairs of image files (input_pipeline/paired_folders.py) that training, the TFDS builder,
launch.fuse and launch.evaluate_cfi share: pairing, the size check and the skip-bad loop."""
import pathlib

import numpy as np
from PIL import Image
import pytest

from cfi_jax import bucketed
from input_pipeline import errors
from input_pipeline import images
from input_pipeline import paired_folders


def _write(path: pathlib.Path, height: int, width: int) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.zeros((height, width), np.uint8)).save(path)
  return path


def test_a_file_without_a_partner_is_an_error_unless_skipped(tmp_path):
  _write(tmp_path / 'ir' / 'a.png', 8, 8)
  _write(tmp_path / 'vi' / 'a.png', 8, 8)
  lonely = _write(tmp_path / 'ir' / 'lonely.png', 8, 8)
  with pytest.raises(errors.DataConfigError, match=r'1 image\(s\) without a partner .*lonely\.png: no visible partner'):
    paired_folders.list_pairs(tmp_path / 'ir', tmp_path / 'vi', skip_bad=False)
  pairs, skipped = paired_folders.list_pairs(tmp_path / 'ir', tmp_path / 'vi', skip_bad=True)
  assert [p.name for p in pairs] == ['a']
  assert skipped == [(str(lonely), f'no visible partner in {tmp_path / "vi"}')]


def test_a_size_mismatch_names_both_files_both_sizes_and_the_fix():
  with pytest.raises(images.PairError) as error:
    paired_folders.pair_size((16, 20), (16, 24, 3), 'ir/x.png', 'vi/x.png')
  assert str(error.value) == ('size mismatch: IR ir/x.png is 20x16 but VIS vi/x.png is 24x16 (WxH); the images of a '
                              'pair must be aligned and the same size')
  with pytest.raises(images.PairError, match=r'is 24x16 \(WxH\); pass --resize_to=ir or --resize_to=vis$'):
    paired_folders.pair_size((16, 20), (16, 24), 'ir/x.png', 'vi/x.png', fix=images.RESIZE_FLAG)
  # With a resize, the named image's size is the pair's; the channels of a colour image do not count.
  assert paired_folders.pair_size((16, 20), (16, 24, 3), 'i', 'v', resize_to='vis') == (16, 24)
  assert paired_folders.pair_size((16, 20), (16, 24, 3), 'i', 'v', resize_to='ir') == (16, 20)
  assert paired_folders.pair_size((16, 20, 3), (16, 20), 'i', 'v') == (16, 20)


def test_a_pair_too_small_for_the_consumer_is_a_pair_error_naming_both_files():
  with pytest.raises(images.PairError, match=r'^ir/t\.png / vi/t\.png is 3x3 \(WxH\); ISFuse needs at least 4x4'):
    paired_folders.pair_size((3, 3), (3, 3), 'ir/t.png', 'vi/t.png', check_size=bucketed.check_size)
  assert paired_folders.pair_size((4, 5), (4, 5), 'i', 'v', check_size=bucketed.check_size) == (4, 5)
  # The size checked is the one the pair takes after the resize.
  assert paired_folders.pair_size((3, 8), (8, 8), 'i', 'v', resize_to='vis', check_size=bucketed.check_size) == (8, 8)
  with pytest.raises(images.PairError, match='is 8x3'):
    paired_folders.pair_size((3, 8), (8, 8), 'i', 'v', resize_to='ir', check_size=bucketed.check_size)


def _pairs(*names):
  return [images.ImagePair(n, pathlib.Path(f'ir/{n}.png'), pathlib.Path(f'vi/{n}.png')) for n in names]


def _work(pair):
  if pair.name == 'mismatched':
    raise images.size_mismatch(pair.ir_path, (2, 2), pair.vis_path, (3, 3))
  if pair.name == 'unreadable':
    raise images.ImageReadError(f'{pair.vis_path}: not a readable image file')
  if pair.name == 'bug':
    raise RuntimeError('not a user mistake')
  return pair.name.upper()


def test_the_skip_loop_stops_at_a_bad_pair_or_records_and_leaves_it_out():
  pairs = _pairs('a', 'mismatched', 'b', 'unreadable', 'c')
  with pytest.raises(images.PairError, match='size mismatch: IR ir/mismatched.png'):
    list(paired_folders.each_good_pair(pairs, _work, skip_bad=False, skipped=[], desc='x', progress=False))
  skipped = [('lonely.png', 'no visible partner in vi')]  # Entries already there are kept.
  done = list(paired_folders.each_good_pair(pairs, _work, skip_bad=True, skipped=skipped, desc='x', progress=False))
  assert [(pair.name, result) for pair, result in done] == [('a', 'A'), ('b', 'B'), ('c', 'C')]
  assert [name for name, _ in skipped] == ['lonely.png', 'mismatched', 'unreadable']
  assert skipped[2][1] == 'vi/unreadable.png: not a readable image file'
  # Only a user's bad input is skipped; a bug still stops the run.
  with pytest.raises(RuntimeError):
    list(paired_folders.each_good_pair(_pairs('bug'), _work, skip_bad=True, skipped=[], desc='x', progress=False))


def test_the_training_scan_lists_every_bad_pair_or_skips_them(tmp_path):
  _write(tmp_path / 'ir' / 'good.png', 8, 8)
  _write(tmp_path / 'vi' / 'good.png', 8, 8)
  _write(tmp_path / 'ir' / 'wide.png', 8, 8)
  _write(tmp_path / 'vi' / 'wide.png', 8, 12)
  lonely = _write(tmp_path / 'vi' / 'lonely.png', 8, 8)
  scan = paired_folders.scan_folders(tmp_path / 'ir', tmp_path / 'vi', skip_bad=True, progress=False)
  assert [p.name for p in scan.pairs] == ['good']
  assert [name for name, _ in scan.skipped] == [str(lonely), 'wide']
  assert scan.skipped[1][1] == str(images.size_mismatch(tmp_path / 'ir' / 'wide.png', (8, 8),
                                                        tmp_path / 'vi' / 'wide.png', (8, 12)))
  with pytest.raises(errors.DataConfigError, match=r'without a partner .*lonely\.png'):
    paired_folders.scan_folders(tmp_path / 'ir', tmp_path / 'vi', progress=False)
  lonely.unlink()
  with pytest.raises(errors.DataConfigError, match=r'1 bad pair\(s\) .*size mismatch: IR .*wide\.png is 8x8'):
    paired_folders.scan_folders(tmp_path / 'ir', tmp_path / 'vi', progress=False)
