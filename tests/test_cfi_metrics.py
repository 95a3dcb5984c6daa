"""Fusion metrics: published/independent per-image values in three dialects, independent re-derivations, properties."""
import csv
import math
import os

import jax
import numpy as np
import pytest
from scipy import ndimage

from cfi_jax import metrics
from input_pipeline import images

# By default the fixtures' images 01-04 (one size, 576x768, so each dialect compiles once); the other six images
# have six more sizes and cost a compilation each: CFI_FULL_METRIC_FIXTURES=1 checks all ten.
TNO_NAMES = (('01', '02', '03', '04', '06', '07', '08', '12', '13', '14')
             if os.environ.get('CFI_FULL_METRIC_FIXTURES') == '1' else ('01', '02', '03', '04'))
METHODS = ('SDNet', 'SeAFusion')
SMALL = (48, 64)  # Large enough for 3-level MS-SSIM (11x11 window at 1/4 scale).


def _tno_triple(shared_dir, method, name, dialect):
  tno = shared_dir / 'data/ivif/tno'
  # Fused files are named like the Tang packaging (tang_name); mapping_tang_to_cddfuse.csv relates them to the
  # CDDFuse numbering, which the fixtures carry as a second column.
  paths = (tno / f'fused_{method}/{name}.png', tno / f'ir/{name}.png', tno / f'vi/{name}.png')
  return [metrics.to_gray_u8(images.read_image(p), dialect) for p in paths]


def _fixture_rows(shared_dir, filename):
  with open(shared_dir / 'data/ivif/tno/metrics' / filename, newline='') as f:
    return [r for r in csv.DictReader(f) if r['method'] in METHODS and r['tang_name'] in TNO_NAMES]


@pytest.mark.parametrize('dialect, filename, renames', [
    ('tang2022', 'tang_matlab_2022_per_image.csv', {}),
    ('tang2023', 'reimpl_tang2023_style.csv', {}),
    ('cddfuse', 'reimpl_cddfuse_style.csv', {'PSNR_cdd': 'PSNR', 'SSIM2': 'SSIM', 'SSIM255': 'SSIM_FILM'}),
])
def test_matches_reference_values(shared_dir, dialect, filename, renames):
  rows = _fixture_rows(shared_dir, filename)
  assert len(rows) == len(TNO_NAMES) * len(METHODS)
  for row in rows:
    got = metrics.compute_metrics(*_tno_triple(shared_dir, row['method'], row['tang_name'], dialect), dialect)
    for column, value in row.items():
      if column in ('tang_name', 'cddfuse_name', 'method'):
        continue
      where = f'{dialect} {row["method"]} {row["tang_name"]} {column}'
      if dialect == 'tang2022' and column == 'Qabf':
        # MATLAB's exact-zero tests on [0,1] data depend on its summation order (spec 2.10).
        assert got['Qabf'] == pytest.approx(float(value), abs=2e-2), where
      else:
        assert got[renames.get(column, column)] == pytest.approx(float(value), rel=1e-4), where


# ------------------------------------------------------------------------------------------------------------------
# Independent re-derivations of the windowed metrics (scipy/numpy loops, float64).


def _texture(seed, size=SMALL, smooth=1.5):
  """uint8 image with structure at several scales (plus flat-ish areas), values 10..245."""
  rng = np.random.default_rng(seed)
  x = ndimage.gaussian_filter(rng.normal(size=size), smooth) + 0.3 * rng.normal(size=size)
  x = (x - x.min()) / (x.max() - x.min())
  return np.round(10 + 235 * x).astype(np.uint8)


def _f64(*arrays):
  return [jax.numpy.asarray(a, jax.numpy.float64) for a in arrays]


def _fspecial(size, sigma):
  r = (size - 1) / 2
  y, x = np.mgrid[-r:r + 1, -r:r + 1]
  h = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
  return h / h.sum()


def test_ssim_variants_match_scipy_reference():
  x, y = _texture(1).astype(np.float64), _texture(2).astype(np.float64)

  def ssim_ref(filt, c1, c2, cov_norm=1.0, crop=0):
    mx, my = filt(x), filt(y)
    vx = cov_norm * (filt(x * x) - mx * mx)
    vy = cov_norm * (filt(y * y) - my * my)
    vxy = cov_norm * (filt(x * y) - mx * my)
    s = (2 * mx * my + c1) * (2 * vxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s[crop:s.shape[0] - crop, crop:s.shape[1] - crop].mean()

  gauss = _fspecial(11, 1.5)
  matlab = ssim_ref(lambda z: ndimage.correlate(z, gauss, mode='nearest'), 0.01 ** 2, 0.03 ** 2)
  skimage_like = ssim_ref(lambda z: ndimage.uniform_filter(z, 7, mode='reflect'), (0.01 * 2) ** 2, (0.03 * 2) ** 2,
                          cov_norm=49 / 48, crop=3)
  with jax.enable_x64(True):
    fx, fy = _f64(x, y)
    assert float(metrics.ssim_matlab(fx, fy)) == pytest.approx(matlab, rel=1e-10)
    assert float(metrics.ssim_skimage(fx, fy)) == pytest.approx(skimage_like, rel=1e-10)


def _mef_ssim_loop(seq, fused):
  """Direct transcription of mef_ssim.m's per-patch algorithm (single scale), for a small image."""
  size, c = 11, (0.03 * 255) ** 2
  window = _fspecial(size, 1.5).ravel()
  eps = np.finfo(np.float64).eps
  h, w = fused.shape
  q = []
  for i in range(h - size + 1):
    for j in range(w - size + 1):
      vecs = seq[i:i + size, j:j + size, :].reshape(-1, seq.shape[2])
      mu = vecs.mean(axis=0)
      norms = np.linalg.norm(vecs - mu, axis=0)
      ed = norms + 0.001
      total = vecs.sum(axis=1)
      r = (np.linalg.norm(total - total.mean()) + eps) / (norms.sum() + eps)
      r = min(max(r, eps), 1 - eps) if r > 1 or r < 0 else r
      p = min(np.tan(np.pi / 2 * r), 10.0)
      wts = (ed / size) ** p + eps
      wts = wts / wts.sum()
      block = ((vecs - mu) / ed * wts).sum(axis=1)
      if np.linalg.norm(block) > 0:
        block = block / np.linalg.norm(block) * ed.max()
      fvec = fused[i:i + size, j:j + size].ravel()
      m1, m2 = (window * block).sum(), (window * fvec).sum()
      s1 = (window * (block - m1) ** 2).sum()
      s2 = (window * (fvec - m2) ** 2).sum()
      s12 = (window * (block - m1) * (fvec - m2)).sum()
      q.append((2 * s12 + c) / (s1 + s2 + c))
  return float(np.mean(q))


def test_mef_ssim_matches_per_patch_loop():
  size = (20, 23)
  a, b, f = (_texture(s, size, smooth=1.0).astype(np.float64) for s in (3, 4, 5))
  b[:6, :8] = 77.0  # A flat corner in one source exercises the contrast guard.
  expected = _mef_ssim_loop(np.stack([a, b], axis=-1), f)
  with jax.enable_x64(True):
    got = float(metrics.mef_ssim(*_f64(f, a, b), levels=1))
  assert got == pytest.approx(expected, rel=1e-9)


def test_vif_matches_scipy_reference():
  ref, dist = _texture(6, (64, 64)).astype(np.float64), _texture(7, (64, 64)).astype(np.float64)

  def vif_ref(r, d):
    num = den = 0.0
    for scale in range(1, 5):
      n = 2 ** (5 - scale) + 1
      win = _fspecial(n, n / 5)
      valid = lambda z: ndimage.correlate(z, win)[n // 2:z.shape[0] - n // 2, n // 2:z.shape[1] - n // 2]
      if scale > 1:
        r, d = valid(r)[::2, ::2], valid(d)[::2, ::2]
      m1, m2 = valid(r), valid(d)
      s1 = np.maximum(valid(r * r) - m1 * m1, 0)
      s2 = np.maximum(valid(d * d) - m2 * m2, 0)
      s12 = valid(r * d) - m1 * m2
      g = s12 / (s1 + 1e-10)
      sv = s2 - g * s12
      g[s1 < 1e-10], sv[s1 < 1e-10], s1[s1 < 1e-10] = 0, s2[s1 < 1e-10], 0
      g[s2 < 1e-10], sv[s2 < 1e-10] = 0, 0
      sv[g < 0], g[g < 0] = s2[g < 0], 0
      sv = np.maximum(sv, 1e-10)
      num += np.log10(1 + g * g * s1 / (sv + 2)).sum()
      den += np.log10(1 + s1 / 2).sum()
    return num / den

  with jax.enable_x64(True):
    got = float(metrics.vif_pair(*_f64(ref, dist)))
  assert got == pytest.approx(vif_ref(ref, dist), rel=1e-10)


# ------------------------------------------------------------------------------------------------------------------
# Properties the definitions imply.


@pytest.fixture(scope='module')
def small_triple():
  return _texture(10), _texture(11), _texture(12)


@pytest.fixture(scope='module')
def small_metrics(small_triple):
  return {d: metrics.compute_metrics(*small_triple, d) for d in metrics.DIALECTS}


# Qabf where gX == gF returns gF (>= 1 on integer images) instead of 1, so Q_g is in [0.9994 / (1 + e^-7.5), 0.9994],
# and the orientation term of identical angles is 0.9879 / (1 + e^-4.4).
_QABF_EQUAL_HIGH = 0.9994 * 0.9879 / (1 + math.exp(-4.4))
_QABF_EQUAL_LOW = _QABF_EQUAL_HIGH / (1 + math.exp(-7.5))


def test_identical_images(small_triple):
  f = small_triple[0]
  for dialect in metrics.DIALECTS:
    m = metrics.compute_metrics(f, f, f, dialect)
    assert m['CC'] == pytest.approx(1.0, abs=1e-12)
    assert m['VIF'] == pytest.approx(2.0, abs=1e-9)  # VIF(X, X) = 1 per source.
    if dialect == 'cddfuse':
      assert m['SSIM'] == pytest.approx(2.0, abs=1e-9)  # Summed over the two sources.
      assert m['MI'] == pytest.approx(2 * m['EN'] * math.log(2), rel=1e-9)  # MI(F, F) = H(F), here in nats.
    else:
      assert m['MI'] == pytest.approx(2 * m['EN'], rel=1e-9)  # No level 255, so the merge changes nothing.
      assert m['SSIM'] == pytest.approx(1.0, abs=1e-3)  # T22: MEF-SSIM, ~1 up to its 0.001 contrast offset.
      assert m['MS_SSIM'] == pytest.approx(1.0, abs=1e-3)
      # No pixel where F's edges exceed both sources' (up to XLA fusing the three edge maps differently).
      assert m['Nabf'] == pytest.approx(0.0, abs=1e-4)
    if dialect != 'tang2022':
      assert _QABF_EQUAL_LOW - 1e-12 <= m['Qabf'] <= _QABF_EQUAL_HIGH + 1e-12


def test_constant_images():
  c = np.full(SMALL, 90, np.uint8)
  for dialect in metrics.DIALECTS:
    m = metrics.compute_metrics(c, c, c, dialect)
    for name in ('EN', 'SD', 'SF', 'AG', 'MI', 'MSE'):
      assert m[name] == pytest.approx(0.0, abs=1e-12), (dialect, name)  # XLA may contract to FMAs.
    assert math.isnan(m['CC'])  # 0/0: no variance.
    if dialect != 'tang2022':
      # Sobel's zero padding makes the border an edge, the same in all three images: the equality case again.
      assert _QABF_EQUAL_LOW - 1e-12 <= m['Qabf'] <= _QABF_EQUAL_HIGH + 1e-12
    # VIF's denominator is 0 for a flat reference: NaN in MATLAB, 1 per source in CDDFuse.
    assert m['VIF'] == 2.0 if dialect == 'cddfuse' else math.isnan(m['VIF'])
  assert metrics.compute_metrics(c, c, c, 'tang2023')['SSIM'] == pytest.approx(1.0, abs=1e-9)
  assert metrics.compute_metrics(c, c, c, 'cddfuse')['SSIM'] == pytest.approx(2.0, abs=1e-9)


def test_swapping_sources(small_triple, small_metrics):
  f, a, b = small_triple
  for dialect in metrics.DIALECTS:
    swapped = metrics.compute_metrics(f, b, a, dialect)
    for name, value in small_metrics[dialect].items():
      if dialect == 'tang2023' and name == 'Nabf':
        # Tang 2023 passes the IR image as the "fused" one, so its Nabf is not symmetric in the sources.
        assert swapped[name] != pytest.approx(value, rel=1e-3)
      else:
        assert swapped[name] == pytest.approx(value, rel=1e-10, abs=1e-12), (dialect, name)


def test_intensity_scaling(small_triple):
  f, a, b = (x // 2 for x in small_triple)  # Halve so that doubling stays in 0..254.
  half = {d: metrics.compute_metrics(f, a, b, d) for d in ('tang2023', 'cddfuse')}
  full = {d: metrics.compute_metrics(2 * f, 2 * a, 2 * b, d) for d in ('tang2023', 'cddfuse')}
  for name in ('SD', 'SF', 'AG'):  # Linear in intensity.
    assert full['tang2023'][name] == pytest.approx(2 * half['tang2023'][name], rel=1e-12)
  for name in ('CC', 'SCD'):  # Correlations ignore scale.
    assert full['tang2023'][name] == pytest.approx(half['tang2023'][name], rel=1e-12)
  assert full['tang2023']['MSE'] == pytest.approx(4 * half['tang2023']['MSE'], rel=1e-12)
  assert full['tang2023']['PSNR'] == pytest.approx(half['tang2023']['PSNR'] - 20 * math.log10(2), rel=1e-12)
  # CDDFuse's peak is max(F), which scales with F: its PSNR is scale-invariant.
  assert full['cddfuse']['PSNR'] == pytest.approx(half['cddfuse']['PSNR'], rel=1e-12)
  # VIF's fixed noise variance sigma_n^2 = 2 makes it depend on the intensity scale.
  assert full['tang2023']['VIF'] != pytest.approx(half['tang2023']['VIF'], rel=1e-4)


def test_dialect_relations(small_triple, small_metrics):
  t23, t22, cdd = (small_metrics[d] for d in ('tang2023', 'tang2022', 'cddfuse'))
  m, n = SMALL
  assert t23['AG'] / cdd['AG'] == pytest.approx(m * n / ((m - 1) * (n - 1)), rel=1e-12)
  assert t22['SF'] == pytest.approx(t23['SF'] / 255, rel=1e-12)
  # No level 255 in these images, so Tang's joint-histogram merge is inactive: bits vs nats only.
  assert max(x.max() for x in small_triple) < 255
  assert t23['MI'] == pytest.approx(cdd['MI'] / math.log(2), rel=1e-12)
  # Tang's PSNR is the standard peak-255 PSNR plus 20 log10(255).
  assert t23['PSNR'] == pytest.approx(10 * math.log10(255 ** 2 / cdd['MSE']) + 20 * math.log10(255), rel=1e-12)
  assert t23['MSE'] == pytest.approx(cdd['MSE'] / 255 ** 2, rel=1e-12)
  # On [0,1] data every Nabf weight is 0.001, so Tang 2022's Nabf is an unweighted mean over pixels.
  assert 0.0 < t22['Nabf'] < 1.0


def test_mi_merges_level_255_in_joint_histogram_only():
  f = np.array([[254, 255], [0, 1]], np.uint8)
  x = np.array([[10, 10], [20, 30]], np.uint8)
  with jax.enable_x64(True):
    ff, fx = _f64(f, x)
    merged = float(metrics.mutual_information_pair(ff, fx))
    plain = float(metrics.mutual_information_pair(ff, fx, merge_top_level=False))
  # Marginals: H(F) = 2 bits, H(X) = 1.5 bits. Joint: 4 distinct pairs (2 bits), merged: (254,10) twice (1.5 bits).
  assert plain == pytest.approx(1.5, abs=1e-12)
  assert merged == pytest.approx(2.0, abs=1e-12)


def test_batch_equals_single(small_triple):
  f, a, b = small_triple
  batch = metrics.compute_metrics_batch(np.stack([f, a]), np.stack([a, b]), np.stack([b, f]), 'cddfuse')
  for i, triple in enumerate([(f, a, b), (a, b, f)]):
    single = metrics.compute_metrics(*triple, 'cddfuse')
    for name, value in single.items():
      assert batch[name][i] == pytest.approx(value, rel=1e-12, nan_ok=True), name


def test_gray_conversion():
  rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [100, 100, 100]]], np.uint8)
  # MATLAB rgb2gray coefficients 0.298936, 0.587043, 0.114021; OpenCV 0.299, 0.587, 0.114.
  np.testing.assert_array_equal(metrics.to_gray_u8(rgb, 'tang2023'), [[76, 150, 29, 100]])
  np.testing.assert_array_equal(metrics.to_gray_u8(rgb, 'cddfuse'), [[76, 150, 29, 100]])
  np.testing.assert_array_equal(metrics.to_gray_u8(np.full((1, 1, 3), [1, 2, 2], np.uint8), 'tang2023'), [[2]])


def test_bad_input():
  g = np.zeros(SMALL, np.uint8)
  with pytest.raises(ValueError, match='unknown metric dialect'):
    metrics.compute_metrics(g, g, g, 'matlab')
  with pytest.raises(ValueError, match='fused must be a 2-D uint8'):
    metrics.compute_metrics(np.zeros(SMALL + (3,), np.uint8), g, g)
  with pytest.raises(ValueError, match='ir must be a 2-D uint8'):
    metrics.compute_metrics(g, g.astype(np.float32), g)
  with pytest.raises(ValueError, match='shapes differ'):
    metrics.compute_metrics(g, g[:-1], g)


def test_host_metrics_equal_jax_metrics_at_an_odd_size():
  # The default float64 path runs the formulas with numpy/scipy (no compilation per image size); the same formulas
  # traced by JAX must give the same numbers.
  rng = np.random.default_rng(11)
  f, a, b = (rng.integers(0, 256, (45, 61), np.uint8) for _ in range(3))
  host = metrics.compute_metrics(f, a, b, 'tang2023')
  with jax.enable_x64(True):
    traced = metrics.dialect_metrics(*(jax.numpy.asarray(x[None], jax.numpy.float64) for x in (f, a, b)),
                                     dialect='tang2023')
  assert set(host) == set(traced)
  for name, value in host.items():
    assert value == pytest.approx(float(traced[name][0]), rel=1e-9, nan_ok=True), name
