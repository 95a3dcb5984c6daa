"""Scoring fused images (launch.fusion_eval, under launch.evaluate_cfi): a folder of published TNO outputs, a tiny
checkpoint, bad input."""
import csv
import json
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from cfi_jax import metrics
from cfi_jax import metrics_report
from cfi_jax.model import ISFuse
from input_pipeline import errors
from input_pipeline import grids
from input_pipeline import images
from cfi_test_utils import random_variables
from launch import checkpoints
from launch import fusion_eval
from launch import fusion_files

TNO_NAMES = ('01', '02')  # One size (576x768): the metrics compile once (shared with test_cfi_metrics.py).
SMALL = (48, 64)  # Same size as test_cfi_metrics.py's synthetic images, for the same reason.


def _run(*, ir_dir, vis_dir, output_dir, dialect=('tang2023',), **kwargs):
  return fusion_eval.evaluate_folders(str(ir_dir), str(vis_dir), output_dir, dialect,
                                      **{k: str(v) if isinstance(v, pathlib.Path) else v for k, v in kwargs.items()})


def _entropy(gray_u8):
  """Shannon entropy (bits) of the 256-level histogram, written out here as the papers define EN."""
  p = np.bincount(gray_u8.ravel(), minlength=256) / gray_u8.size
  p = p[p > 0]
  return float(-(p * np.log2(p)).sum())


def _assert_rows_score(rows, images_by_row):
  """Each CSV row's EN and SD are those of the image it names (computed here with numpy, not the metrics code)."""
  for row in rows:
    fused = images_by_row(row)
    assert float(row['EN']) == pytest.approx(_entropy(fused), rel=1e-6), (row['name'], row['method'])
    assert float(row['SD']) == pytest.approx(np.std(fused.astype(np.float64)), rel=1e-6), (row['name'], row['method'])


def _read_csv(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def _link_tno(shared_dir, tmp_path):
  """IR/VIS/fused folders holding links to a few TNO pairs and their SDNet outputs."""
  tno = shared_dir / 'data/ivif/tno'
  dirs = {k: tmp_path / k for k in ('ir', 'vi', 'fused_SDNet')}
  for name in TNO_NAMES:
    for key, directory in dirs.items():
      directory.mkdir(exist_ok=True)
      (directory / f'{name}.png').symlink_to(tno / key / f'{name}.png')
  return dirs


def test_fused_dir_on_tno_sdnet(shared_dir, tmp_path):
  dirs = _link_tno(shared_dir, tmp_path)
  out = tmp_path / 'out'
  _run(fused_dir=dirs['fused_SDNet'], ir_dir=dirs['ir'], vis_dir=dirs['vi'], output_dir=out, dialect=['tang2023'],
       num_grid=2)

  rows = _read_csv(out / 'metrics_tang2023.csv')
  assert [(r['name'], r['method']) for r in rows] == [(n, 'fused_SDNet') for n in TNO_NAMES]
  assert list(rows[0]) == ['name', 'method', *metrics.METRIC_NAMES['tang2023']]
  _assert_rows_score(rows, lambda row: images.read_image(dirs['fused_SDNet'] / f'{row["name"]}.png'))

  # The independent reimplementation's PSNR/AG for these images (Tang convention, as the CFI paper).
  with open(shared_dir / 'data/ivif/tno/metrics/reimpl_tang2023_style.csv', newline='') as f:
    fixture = {r['tang_name']: r for r in csv.DictReader(f) if r['method'] == 'SDNet'}
  for row in rows:
    for name in ('PSNR', 'AG', 'Qabf'):
      assert float(row[name]) == pytest.approx(float(fixture[row['name']][name]), rel=1e-4)

  report = json.loads((out / 'summary.json').read_text())
  stats = report['dialects']['tang2023']['summary']['fused_SDNet']
  psnr = [float(r['PSNR']) for r in rows]
  assert stats['PSNR']['mean'] == pytest.approx(np.mean(psnr), rel=1e-9)
  assert stats['PSNR']['std'] == pytest.approx(np.std(psnr), rel=1e-6)
  assert report['num_pairs'] == 2 and report['skipped'] == []
  markdown = (out / 'summary.md').read_text()
  assert '## Dialect `tang2023`' in markdown
  assert f'| fused_SDNet | {stats["EN"]["mean"]:.4f} ± {stats["EN"]["std"]:.4f} |' in markdown

  grid = images.read_image(out / 'grid.png')
  h, w = 576, 768
  assert grid.shape == (2 * h + grids.GAP, 3 * w + 2 * grids.GAP, 3)
  # Row 2, column 3 is the second fused image (gray, so all channels equal it).
  fused_02 = images.read_image(dirs['fused_SDNet'] / '02.png')
  np.testing.assert_array_equal(grid[h + grids.GAP:, 2 * (w + grids.GAP):, 0], fused_02)


@pytest.fixture(scope='module')
def tiny_setup(tmp_path_factory):
  """A features=8 ISFuse checkpoint and two 48x64 pairs (gray IR, colour VIS)."""
  root = tmp_path_factory.mktemp('evaluate')
  checkpoint = root / 'tiny_ckpt'
  checkpoints.save_inference_checkpoint(checkpoint, random_variables(ISFuse(features=8), seed=3),
                                        {'model': 'cfi', 'model_config': {'features': 8}})
  rng = np.random.default_rng(0)
  for name in ('a', 'b'):
    (root / 'ir').mkdir(exist_ok=True)
    (root / 'vis').mkdir(exist_ok=True)
    Image.fromarray(rng.integers(0, 256, SMALL, np.uint8)).save(root / 'ir' / f'{name}.png')
    Image.fromarray(rng.integers(60, 200, SMALL + (3,), np.uint8)).save(root / 'vis' / f'{name}.png')
  return root, checkpoint


def test_checkpoint_mode_with_baselines(tiny_setup, tmp_path):
  root, checkpoint = tiny_setup
  out = tmp_path / 'out'
  _run(checkpoint=checkpoint, ir_dir=root / 'ir', vis_dir=root / 'vis', output_dir=out,
       dialect=['tang2023', 'cddfuse'], baselines=True, num_grid=1)

  for dialect in ('tang2023', 'cddfuse'):
    rows = _read_csv(out / f'metrics_{dialect}.csv')
    assert [(r['name'], r['method']) for r in rows] == [
        (n, m) for n in ('a', 'b') for m in ('tiny_ckpt', 'average', 'maximum', 'ir_alone', 'visible_alone')]

    def scored_image(row, dialect=dialect):
      ir = metrics.to_gray_u8(images.read_image(root / 'ir' / f'{row["name"]}.png'), dialect)
      vis = metrics.to_gray_u8(images.read_image(root / 'vis' / f'{row["name"]}.png'), dialect)
      if row['method'] == 'tiny_ckpt':
        fused_rgb = images.read_image(out / 'fused' / f'{row["name"]}.png')
        assert fused_rgb.shape == SMALL + (3,)  # Colour VIS -> colour output, converted to gray for scoring.
        return metrics.to_gray_u8(fused_rgb, dialect)
      if row['method'] == 'average':
        return np.floor((ir.astype(np.float64) + vis) / 2 + 0.5).astype(np.uint8)
      if row['method'] == 'maximum':
        return np.maximum(ir, vis)
      return {'ir_alone': ir, 'visible_alone': vis}[row['method']]

    _assert_rows_score(rows, scored_image)

  report = json.loads((out / 'summary.json').read_text())
  assert set(report['dialects']) == {'tang2023', 'cddfuse'}
  assert list(report['dialects']['cddfuse']['summary']) == ['tiny_ckpt', 'average', 'maximum', 'ir_alone',
                                                            'visible_alone']
  assert images.read_image(out / 'grid.png').shape == (SMALL[0], 3 * SMALL[1] + 2 * grids.GAP, 3)


def test_bad_input(tiny_setup, tmp_path):
  root, checkpoint = tiny_setup
  fused_dir = tmp_path / 'fused'
  fused_dir.mkdir()
  Image.fromarray(np.zeros(SMALL, np.uint8)).save(fused_dir / 'a.png')
  common = dict(ir_dir=root / 'ir', vis_dir=root / 'vis', output_dir=tmp_path / 'out')
  with pytest.raises(fusion_files.PairError, match=r"no fused image for pair 'b'"):
    _run(fused_dir=fused_dir, **common)
  Image.fromarray(np.zeros((10, 10), np.uint8)).save(fused_dir / 'b.png')
  with pytest.raises(fusion_files.PairError, match=r'b\.png is 10x10 but its sources are 64x48'):
    _run(fused_dir=fused_dir, **common)
  _, skipped = _run(fused_dir=fused_dir, skip_bad=True, num_grid=0, **common)
  report = json.loads((tmp_path / 'out/summary.json').read_text())
  assert report['num_pairs'] == 1 and report['skipped'][0]['name'] == 'b' and [n for n, _ in skipped] == ['b']
  assert not (tmp_path / 'out/grid.png').exists()
  with pytest.raises(errors.ConfigError, match='exactly one of'):
    _run(fused_dir=fused_dir, checkpoint=checkpoint, **common)
  with pytest.raises(errors.ConfigError, match="unknown --dialect 'matlab'"):
    _run(fused_dir=fused_dir, dialect=['matlab'], **common)
  with pytest.raises(errors.ConfigError, match="--method 'average' clashes"):
    _run(fused_dir=fused_dir, method='average', baselines=True, **common)


def test_skip_bad_lists_a_file_without_partner(tiny_setup, tmp_path):
  root, _ = tiny_setup
  for sub in ('ir', 'vis', 'fused'):
    (tmp_path / sub).mkdir()
    for name in ('a', 'b'):
      (tmp_path / sub / f'{name}.png').symlink_to(root / ('vis' if sub == 'fused' else sub) / f'{name}.png')
  Image.fromarray(np.zeros(SMALL, np.uint8)).save(tmp_path / 'ir' / 'lonely.png')
  common = dict(ir_dir=tmp_path / 'ir', vis_dir=tmp_path / 'vis', output_dir=tmp_path / 'out',
                fused_dir=tmp_path / 'fused', num_grid=0)
  with pytest.raises(errors.DataConfigError, match=r'lonely\.png: no visible partner'):
    _run(**common)
  _run(skip_bad=True, **common)
  report = json.loads((tmp_path / 'out/summary.json').read_text())
  assert report['num_pairs'] == 2
  assert [pathlib.Path(s['name']).name for s in report['skipped']] == ['lonely.png']
  assert 'no visible partner' in report['skipped'][0]['reason']


def test_summary_and_grid_helpers():
  rows = [{'method': 'x', 'A': 1.0}, {'method': 'y', 'A': 5.0}, {'method': 'x', 'A': 3.0},
          {'method': 'x', 'A': float('nan')}]
  summary = metrics_report.summarize(rows, ['A'])
  assert summary == {'x': {'A': {'mean': 2.0, 'std': 1.0, 'count': 2}},
                     'y': {'A': {'mean': 5.0, 'std': 0.0, 'count': 1}}}
  assert metrics_report.markdown_table(summary, ['A'], digits=2).splitlines()[2] == '| x | 2.00 ± 1.00 |'
  grid = grids.make_grid([[np.zeros((2, 3), np.uint8), np.ones((2, 2, 3), np.float32)],
                              [np.full((4, 1), 7, np.uint8)]], gap=1)
  assert grid.shape == (2 + 1 + 4, 3 + 1 + 2, 3)
  np.testing.assert_array_equal(grid[:2, 4:], 255)
  np.testing.assert_array_equal(grid[3:, 0], 7)
  np.testing.assert_array_equal(grid[3:, 1:], grids.GAP_VALUE)  # Padding of the short row.
  with pytest.raises(ValueError, match='HxW, HxWx1 or HxWx3'):
    grids.make_grid([[np.zeros((2, 2, 2))]])


# Scores a fused folder in a process whose only JAX platform is absent here, then checks that JAX indeed has none.
_SCORE_WITHOUT_A_BACKEND = '''
import sys
from launch import fusion_eval
fusion_eval.evaluate_folders(sys.argv[1], sys.argv[2], sys.argv[3], ["tang2023"], fused_dir=sys.argv[4],
                             baselines=True, num_grid=0)
import jax
try:
  jax.devices()
  print("a JAX backend is available")
except (RuntimeError, AssertionError):  # jax 0.10 asserts when no listed platform loads.
  print("no JAX backend")
'''


def test_float64_scoring_needs_no_jax_device(tiny_setup, tmp_path, monkeypatch, repo_root):
  """The float64 metrics run with numpy on the host, so scoring works where JAX_PLATFORMS names only an
  accelerator (a TPU or GPU runtime, or the Colab notebook's cell), with no CPU backend to fall back on."""
  root, _ = tiny_setup
  fused = tmp_path / 'fused'
  fused.mkdir()
  rng = np.random.default_rng(1)
  for name in ('a', 'b'):
    Image.fromarray(rng.integers(0, 256, SMALL, np.uint8)).save(fused / f'{name}.png')
  _run(fused_dir=fused, ir_dir=root / 'ir', vis_dir=root / 'vis', output_dir=tmp_path / 'here', baselines=True,
       num_grid=0)
  monkeypatch.setenv('JAX_PLATFORMS', 'cuda')
  monkeypatch.setenv('PYTHONPATH', str(repo_root))
  result = subprocess.run([sys.executable, '-c', _SCORE_WITHOUT_A_BACKEND, str(root / 'ir'), str(root / 'vis'),
                           str(tmp_path / 'there'), str(fused)], cwd=repo_root, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-5000:]
  if 'no JAX backend' not in result.stdout:
    pytest.skip('this host has a CUDA backend, so the run did not go without one')
  assert (tmp_path / 'there' / 'metrics_tang2023.csv').read_text() == (tmp_path / 'here' / 'metrics_tang2023.csv'
                                                                       ).read_text()
