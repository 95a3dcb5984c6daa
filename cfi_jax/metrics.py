"""Image-fusion metrics (EN, SD, SF, AG, MI, CC, SCD, PSNR, MSE, VIF, Qabf, SSIM, Nabf, MS-SSIM) in three dialects.

The field prints the same names for different formulas (see shared/specs/fusion_metrics.md). Each dialect
reproduces one public evaluator:

* 'tang2023' (default): Linfeng Tang's MATLAB evaluator after its March 2023 fixes, the convention of the CFI
  paper's PSNR (about 60-66 dB) and AG. Its Nabf keeps the evaluator's argument-order bug (the IR image is passed
  as the fused one), so that the number matches what Tang-based papers print.
* 'tang2022': the same evaluator up to commit 5d6c43a, whose uint8 quirks produced the published per-image
  spreadsheet (SD and VIF saturate, SF/Qabf/Nabf work on [0, 1], SSIM is MEF-SSIM).
* 'cddfuse': the CDDFuse Python evaluator (also DDFM/EMMA/FILM): MI in nats, AG as a plain mean, PSNR with the
  peak max(F), SSIM summed over the sources with skimage 0.19's 7x7 window and data_range = 2.

The metric functions take float arrays of gray values in 0..255 with shape [..., H, W] (a leading batch of
same-size images) and return one value per image, computed in the dtype of their input with the array library of
their input: numpy arrays run on the host (numpy/scipy), JAX arrays in JAX (jit-able, any device). The formulas
are written once for both. `compute_metrics` runs them in float64 on the host by default, because SSIM's
stabilising constants are far below float32 round-off of 0..255 second moments, and because a host computation
compiles nothing: JAX would compile the metrics again for every image size (seconds on CPU each), which dominates
scoring a test folder of mixed sizes. `dtype=np.float32` runs the jitted JAX path on the default device instead.

Key names: MS_SSIM is Tang's multi-scale MEF-SSIM (not Wang's 5-scale MS-SSIM); cddfuse also reports SSIM_FILM,
FILM's copy of the evaluator (data_range = 255). Validated against tang_matlab_2022_per_image.csv and the
reimpl_*_style.csv fixtures of shared/data/ivif/tno/metrics (tests/test_cfi_metrics.py).
"""
from collections.abc import Callable, Mapping
import functools
import math

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

DIALECTS = ('tang2023', 'tang2022', 'cddfuse')
DEFAULT_DIALECT = 'tang2023'

_EPS = float(np.finfo(np.float64).eps)  # MATLAB's eps, used by the MEF-SSIM code as a guard.
_TANG_PSNR_OFFSET_DB = 20.0 * math.log10(255.0)  # Tang's PSNR = standard PSNR (peak 255) + 48.13 dB.


# ----------------------------------------------------------------------------------------------------------------
# Filtering helpers.


def _xp(x):
  """The array library of `x`: numpy for host arrays, jax.numpy for JAX arrays (and tracers)."""
  return np if isinstance(x, (np.ndarray, np.generic)) else jnp


def _matlab_gaussian_1d(size: int, sigma: float) -> np.ndarray:
  """1-D factor of MATLAB fspecial('gaussian', size, sigma), normalised to sum 1.

  fspecial's 2-D kernel is the outer product of this vector with itself (its tail cut-off at eps * max never
  triggers for the sizes used here: the smallest corner value is 1.5e-5 of the peak).
  """
  r = (size - 1) / 2.0
  h = np.exp(-np.square(np.arange(-r, r + 1)) / (2.0 * sigma * sigma))
  return h / h.sum()


def _uniform_1d(size: int) -> np.ndarray:
  return np.full((size,), 1.0 / size)


def _filter_valid(x: jax.Array, k1d: np.ndarray) -> jax.Array:
  """Correlation of [..., H, W] with the separable kernel outer(k1d, k1d), 'valid' output (MATLAB filter2).

  Two 1-D passes instead of one 2-D kernel: 2k instead of k^2 multiply-adds per pixel.
  """
  if _xp(x) is np:
    # Every kernel here has odd length: the centred correlation's values at least r from each border are 'valid'.
    r = len(k1d) // 2
    for axis in (-2, -1):
      x = ndimage.correlate1d(x, k1d, axis=axis, mode='constant')
      x = x[..., r:x.shape[-2] - r, :] if axis == -2 else x[..., r:x.shape[-1] - r]
    return x
  lead, (h, w) = x.shape[:-2], x.shape[-2:]
  y = x.reshape((-1, h, w, 1))
  k = jnp.asarray(k1d, x.dtype)
  for kernel in (k[:, None, None, None], k[None, :, None, None]):
    y = lax.conv_general_dilated(y, kernel, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                 precision=lax.Precision.HIGHEST)
  return y[..., 0].reshape(lead + y.shape[1:3])


def _pad_hw(x: jax.Array, before: int, after: int, mode: str) -> jax.Array:
  pad = [(0, 0)] * (x.ndim - 2) + [(before, after), (before, after)]
  return _xp(x).pad(x, pad, mode=mode)


def _shifted_sum(x: jax.Array, kernel: np.ndarray) -> jax.Array:
  """Correlation of an already padded [..., H+2, W+2] array with a 3x3 integer kernel, as exact shifted sums."""
  h, w = x.shape[-2] - 2, x.shape[-1] - 2
  out = _xp(x).zeros(x.shape[:-2] + (h, w), x.dtype)
  for i in range(3):
    for j in range(3):
      if kernel[i, j]:
        out = out + kernel[i, j] * x[..., i:i + h, j:j + w]
  return out


def _mean_hw(x: jax.Array) -> jax.Array:
  return _xp(x).mean(x, axis=(-2, -1))


def _sum_hw(x: jax.Array) -> jax.Array:
  return _xp(x).sum(x, axis=(-2, -1))


def _pearson(x: jax.Array, y: jax.Array) -> jax.Array:
  """Pearson correlation per image (MATLAB corr2)."""
  xc = x - _mean_hw(x)[..., None, None]
  yc = y - _mean_hw(y)[..., None, None]
  return _sum_hw(xc * yc) / _xp(x).sqrt(_sum_hw(xc * xc) * _sum_hw(yc * yc))


# ----------------------------------------------------------------------------------------------------------------
# Histogram metrics (exact integer bins).


def _histogram(levels: jax.Array, length: int) -> jax.Array:
  """Counts of integer `levels` [..., H, W] per image: [..., length] (exact int32 bins)."""
  flat = levels.reshape((-1, levels.shape[-2] * levels.shape[-1]))
  if _xp(levels) is np:
    counts = np.stack([np.bincount(v, minlength=length) for v in flat])
  else:
    counts = jax.vmap(lambda v: jnp.bincount(v, length=length))(flat)
  return counts.reshape(levels.shape[:-2] + (length,))


def _entropy_from_counts(counts: jax.Array, log_base: float, dtype) -> jax.Array:
  xp = _xp(counts)
  p = counts.astype(dtype) / xp.sum(counts, axis=-1, keepdims=True).astype(dtype)
  safe = xp.where(p > 0, p, 1.0)
  return -xp.sum(p * xp.log(safe), axis=-1) / math.log(log_base)


def _levels(img: jax.Array) -> jax.Array:
  """Integer gray levels 0..255 of an integer-valued float image (half away from zero, as MATLAB/uint8 casts)."""
  xp = _xp(img)
  return xp.clip(xp.floor(img + 0.5), 0, 255).astype(np.int32)


def entropy(fused: jax.Array) -> jax.Array:
  """EN: Shannon entropy (bits) of the 256-bin histogram of round(F). Identical in every dialect."""
  return _entropy_from_counts(_histogram(_levels(fused), 256), 2.0, fused.dtype)


def mutual_information_pair(x: jax.Array, y: jax.Array, *, log_base: float = 2.0,
                            merge_top_level: bool = True) -> jax.Array:
  """MI(X, Y) = H(X) + H(Y) - H(X, Y) from 256-bin marginals and a 256x256 joint histogram.

  merge_top_level reproduces Tang's Hab.m, which indexes the joint histogram with uint8 + 1 (saturating), so level
  255 lands in bin 254 in the joint histogram only.
  """
  lx, ly = _levels(x), _levels(y)
  hx = _entropy_from_counts(_histogram(lx, 256), log_base, x.dtype)
  hy = _entropy_from_counts(_histogram(ly, 256), log_base, x.dtype)
  if merge_top_level:
    lx, ly = _xp(x).minimum(lx, 254), _xp(x).minimum(ly, 254)
  hxy = _entropy_from_counts(_histogram(lx * 256 + ly, 256 * 256), log_base, x.dtype)
  return hx + hy - hxy


def mutual_information(fused: jax.Array, ir: jax.Array, vis: jax.Array, *, log_base: float = 2.0,
                       merge_top_level: bool = True) -> jax.Array:
  """MI = MI(F, A) + MI(F, B). Tang: bits with the 255->254 merge; CDDFuse (sklearn): nats, no merge."""
  kw = dict(log_base=log_base, merge_top_level=merge_top_level)
  return mutual_information_pair(fused, ir, **kw) + mutual_information_pair(fused, vis, **kw)


# ----------------------------------------------------------------------------------------------------------------
# Single-image statistics.


def standard_deviation(fused: jax.Array, *, uint8_saturation: bool = False) -> jax.Array:
  """SD: population standard deviation on 0..255.

  uint8_saturation reproduces Tang 2022, which subtracted the mean from a uint8 image: the difference is rounded
  and clipped to [0, 255] and its square saturates at 255.
  """
  xp = _xp(fused)
  d = fused - _mean_hw(fused)[..., None, None]
  if uint8_saturation:
    d = xp.minimum(xp.clip(xp.floor(d + 0.5), 0.0, 255.0) ** 2, 255.0)
    return xp.sqrt(_mean_hw(d))
  return xp.sqrt(_mean_hw(d * d))


def spatial_frequency(fused: jax.Array) -> jax.Array:
  """SF = sqrt(RF^2 + CF^2), each the mean squared neighbour difference over the differences that exist."""
  rf2 = _mean_hw((fused[..., :, 1:] - fused[..., :, :-1]) ** 2)
  cf2 = _mean_hw((fused[..., 1:, :] - fused[..., :-1, :]) ** 2)
  return _xp(fused).sqrt(rf2 + cf2)


def _matlab_gradient(x: jax.Array, axis: int) -> jax.Array:
  """MATLAB/numpy gradient: central differences inside, one-sided at both borders."""
  n = x.shape[axis]
  take = lambda start, stop: x[(Ellipsis, slice(start, stop)) + (slice(None),) * (-axis - 1)]
  first = take(1, 2) - take(0, 1)
  inner = (take(2, n) - take(0, n - 2)) / 2.0
  last = take(n - 1, n) - take(n - 2, n - 1)
  return _xp(x).concatenate([first, inner, last], axis=axis)


def average_gradient(fused: jax.Array, *, tang_normalization: bool = True) -> jax.Array:
  """AG = sum sqrt((Gx^2 + Gy^2) / 2) over all pixels / ((M-1)(N-1)) (Tang, VIFB); CDDFuse divides by M*N."""
  gx = _matlab_gradient(fused, -1)
  gy = _matlab_gradient(fused, -2)
  total = _sum_hw(_xp(fused).sqrt((gx * gx + gy * gy) / 2.0))
  m, n = fused.shape[-2:]
  return total / ((m - 1) * (n - 1) if tang_normalization else m * n)


# ----------------------------------------------------------------------------------------------------------------
# Two-source correlation and error metrics.


def correlation_coefficient(fused: jax.Array, ir: jax.Array, vis: jax.Array) -> jax.Array:
  """CC = (r(A, F) + r(B, F)) / 2 with Pearson r."""
  return 0.5 * (_pearson(ir, fused) + _pearson(vis, fused))


def scd(fused: jax.Array, ir: jax.Array, vis: jax.Array) -> jax.Array:
  """SCD (Aslantas & Bendes): r(F - B, A) + r(F - A, B)."""
  return _pearson(fused - vis, ir) + _pearson(fused - ir, vis)


def mse(fused: jax.Array, ir: jax.Array, vis: jax.Array) -> jax.Array:
  """MSE on 0..255 averaged over the two sources: (mean((F-A)^2) + mean((F-B)^2)) / 2."""
  return 0.5 * (_mean_hw((fused - ir) ** 2) + _mean_hw((fused - vis) ** 2))


def psnr_tang(fused: jax.Array, ir: jax.Array, vis: jax.Array) -> jax.Array:
  """Tang's PSNR = 20 log10(255 / sqrt(MSE on [0, 1])) = standard PSNR (peak 255) + 48.13 dB."""
  return 10.0 * _xp(fused).log10(255.0 ** 2 / mse(fused, ir, vis)) + _TANG_PSNR_OFFSET_DB


def psnr_cddfuse(fused: jax.Array, ir: jax.Array, vis: jax.Array) -> jax.Array:
  """CDDFuse's PSNR = 10 log10(max(F)^2 / MSE) on 0..255: the peak is the fused image's maximum, not 255."""
  xp = _xp(fused)
  peak = xp.max(fused, axis=(-2, -1))
  return 10.0 * xp.log10(peak * peak / mse(fused, ir, vis))


# ----------------------------------------------------------------------------------------------------------------
# VIF (pixel-domain multiscale, Sheikh & Bovik vifp_mscale).


def vif_pair(ref: jax.Array, dist: jax.Array, *, saturate_first_scale: bool = False,
             nan_to_one: bool = False) -> jax.Array:
  """VIF(ref, dist) over 4 scales with sigma_n^2 = 2 on 0..255 data.

  saturate_first_scale reproduces Tang 2022, which fed uint8 images into the first scale so that ref*ref,
  dist*dist and ref*dist saturated at 255. nan_to_one is CDDFuse's rule for a 0/0 score (a flat reference).
  """
  xp = _xp(ref)
  sigma_nsq, eps = 2.0, 1e-10
  num = xp.zeros(ref.shape[:-2], ref.dtype)
  den = xp.zeros(ref.shape[:-2], ref.dtype)
  for scale in range(1, 5):
    size = 2 ** (5 - scale) + 1
    win = _matlab_gaussian_1d(size, size / 5.0)
    if scale > 1:
      ref, dist = _filter_valid(xp.stack([ref, dist]), win)[..., ::2, ::2]
    prod = lambda x, y: xp.minimum(x * y, 255.0) if (saturate_first_scale and scale == 1) else x * y
    mu1, mu2, e11, e22, e12 = _filter_valid(
        xp.stack([ref, dist, prod(ref, ref), prod(dist, dist), prod(ref, dist)]), win)
    s1 = xp.maximum(e11 - mu1 * mu1, 0.0)
    s2 = xp.maximum(e22 - mu2 * mu2, 0.0)
    s12 = e12 - mu1 * mu2
    g = s12 / (s1 + eps)
    sv = s2 - g * s12
    # Edge cases in the reference order: flat reference, flat distorted image, negative gain, floor.
    flat1 = s1 < eps
    g, sv, s1 = xp.where(flat1, 0.0, g), xp.where(flat1, s2, sv), xp.where(flat1, 0.0, s1)
    flat2 = s2 < eps
    g, sv = xp.where(flat2, 0.0, g), xp.where(flat2, 0.0, sv)
    neg = g < 0
    sv, g = xp.where(neg, s2, sv), xp.where(neg, 0.0, g)
    sv = xp.maximum(sv, eps)
    num = num + _sum_hw(xp.log10(1.0 + g * g * s1 / (sv + sigma_nsq)))
    den = den + _sum_hw(xp.log10(1.0 + s1 / sigma_nsq))
  score = num / den
  return xp.where(xp.isnan(score), 1.0, score) if nan_to_one else score


def vif(fused: jax.Array, ir: jax.Array, vis: jax.Array, **kwargs) -> jax.Array:
  """VIF = VIF(A, F) + VIF(B, F); keyword arguments as in vif_pair."""
  xp = _xp(fused)
  return xp.sum(vif_pair(xp.stack([ir, vis]), xp.stack([fused, fused]), **kwargs), axis=0)


# ----------------------------------------------------------------------------------------------------------------
# Edge-based metrics: Qabf (Xydeas & Petrovic) and Nabf (Shreyamsha Kumar).

_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])
_SOBEL_Y = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]])


def _qabf_edges(img: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Sobel strength and orientation with zero padding; alpha = pi/2 where the x response is exactly 0."""
  xp = _xp(img)
  padded = _pad_hw(img, 1, 1, 'constant')
  sx = _shifted_sum(padded, _SOBEL_X)
  sy = _shifted_sum(padded, _SOBEL_Y)
  g = xp.sqrt(sx * sx + sy * sy)
  alpha = xp.where(sx == 0, math.pi / 2, xp.arctan(sy / xp.where(sx == 0, 1.0, sx)))
  return g, alpha


def _qabf_preservation(g_x, a_x, g_f, a_f) -> jax.Array:
  xp = _xp(g_x)
  # The equality case returns gF (0, not 1, where both are 0): inherited by every public implementation.
  ratio = xp.where(g_x > g_f, g_f / xp.where(g_x > g_f, g_x, 1.0),
                    xp.where(g_x == g_f, g_f, g_x / xp.where(g_x < g_f, g_f, 1.0)))
  orient = 1.0 - xp.abs(a_x - a_f) / (math.pi / 2)
  q_g = 0.9994 / (1.0 + xp.exp(-15.0 * (ratio - 0.5)))
  q_a = 0.9879 / (1.0 + xp.exp(-22.0 * (orient - 0.8)))
  return q_g * q_a


def qabf(fused: jax.Array, ir: jax.Array, vis: jax.Array) -> jax.Array:
  """Q^{AB/F} = sum(Q_AF gA + Q_BF gB) / sum(gA + gB). Scale matters only through exact-zero/equality tests."""
  g_a, a_a = _qabf_edges(ir)
  g_b, a_b = _qabf_edges(vis)
  g_f, a_f = _qabf_edges(fused)
  q_af = _qabf_preservation(g_a, a_a, g_f, a_f)
  q_bf = _qabf_preservation(g_b, a_b, g_f, a_f)
  return _sum_hw(q_af * g_a + q_bf * g_b) / _sum_hw(g_a + g_b)


def _nabf_edges(img: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Sobel/8 with mirror extension (sobel_fn.m); alpha = atan(gv/gh), 0 where both responses are 0."""
  xp = _xp(img)
  padded = _pad_hw(img, 1, 1, 'reflect')
  gv = _shifted_sum(padded, _SOBEL_X) / 8.0
  gh = _shifted_sum(padded, -_SOBEL_Y) / 8.0
  g = xp.sqrt(gh * gh + gv * gv)
  # MATLAB atan(gv/gh) gives +-pi/2 where only gh is 0.
  alpha = xp.where(gh == 0, xp.sign(gv) * (math.pi / 2), xp.arctan(gv / xp.where(gh == 0, 1.0, gh)))
  return g, alpha


def _nabf_preservation(g_x, a_x, g_f, a_f) -> jax.Array:
  xp = _xp(g_x)
  zero = (g_x == 0) | (g_f == 0)
  ratio = xp.where(zero, 0.0, xp.minimum(g_x, g_f) / xp.where(zero, 1.0, xp.maximum(g_x, g_f)))
  orient = xp.abs(xp.abs(a_x - a_f) - math.pi / 2) * 2.0 / math.pi
  q_g = 0.9999 / (1.0 + xp.exp(-19.0 * (ratio - 0.5)))
  q_a = 0.9995 / (1.0 + xp.exp(-22.0 * (orient - 0.5)))
  return xp.sqrt(q_g * q_a)


def nabf(fused: jax.Array, ir: jax.Array, vis: jax.Array) -> jax.Array:
  """Modified fusion-artefact measure N_AB/F (Shreyamsha Kumar), on 0..255 data with weights g^1.5 where g >= 2."""
  xp = _xp(fused)
  g_a, a_a = _nabf_edges(ir)
  g_b, a_b = _nabf_edges(vis)
  g_f, a_f = _nabf_edges(fused)
  q_af = _nabf_preservation(g_a, a_a, g_f, a_f)
  q_bf = _nabf_preservation(g_b, a_b, g_f, a_f)
  w_a = xp.where(g_a >= 2.0, g_a ** 1.5, 0.001)
  w_b = xp.where(g_b >= 2.0, g_b ** 1.5, 0.001)
  artefact = (g_f > g_a) & (g_f > g_b)
  return _sum_hw(xp.where(artefact, (1.0 - q_af) * w_a + (1.0 - q_bf) * w_b, 0.0)) / _sum_hw(w_a + w_b)


# ----------------------------------------------------------------------------------------------------------------
# SSIM variants (dm-pix computes the SSIM map; the window and constants select the evaluator).


def _ssim(x: jax.Array, y: jax.Array, filter_fn: Callable[[jax.Array], jax.Array], *, max_val: float,
          k2: float = 0.03) -> jax.Array:
  """Mean SSIM map of [..., H, W] images with local statistics from filter_fn, clamped as dm-pix's ssim does."""
  xp = _xp(x)
  mu_x, mu_y, e_xx, e_yy, e_xy = filter_fn(xp.stack([x, y, x * x, y * y, x * y]))
  # Variances are at least float32 eps^2 and the covariance obeys Cauchy-Schwarz (dm-pix's round-off guards).
  tiny = float(np.finfo(np.float32).eps) ** 2
  var_x = xp.maximum(tiny, e_xx - mu_x * mu_x)
  var_y = xp.maximum(tiny, e_yy - mu_y * mu_y)
  cov = e_xy - mu_x * mu_y
  cov = xp.sign(cov) * xp.minimum(xp.sqrt(var_x * var_y), xp.abs(cov))
  c1, c2 = (0.01 * max_val) ** 2, (k2 * max_val) ** 2
  ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
  return _mean_hw(ssim_map)


def ssim_matlab(x: jax.Array, y: jax.Array, *, dynamic_range: float = 1.0) -> jax.Array:
  """MATLAB ssim(x, y): 11x11 Gaussian (sigma 1.5), replicate padding, mean of the full-size map.

  MATLAB's default dynamic range for double input is 1, which Tang's evaluator keeps on 0..255 data.
  """
  win = _matlab_gaussian_1d(11, 1.5)
  return _ssim(x, y, lambda z: _filter_valid(_pad_hw(z, 5, 5, 'edge'), win), max_val=dynamic_range)


def ssim_skimage(x: jax.Array, y: jax.Array, *, data_range: float = 2.0) -> jax.Array:
  """skimage 0.19 structural_similarity defaults: 7x7 uniform window, sample covariance, 3-px border cropped.

  The border crop equals the 'valid' map. Sample covariance multiplies every (co)variance by 49/48, which is
  exactly SSIM with C2 scaled by 48/49, i.e. k2 * sqrt(48/49). data_range = 2 is what skimage 0.19 assumed for
  CDDFuse's float32 input; FILM passes 255.
  """
  win = _uniform_1d(7)
  return _ssim(x, y, lambda z: _filter_valid(z, win), max_val=data_range, k2=0.03 * math.sqrt(48.0 / 49.0))


def _ssim_two_sources(ssim_fn, fused, ir, vis, **kwargs) -> jax.Array:
  """ssim_fn(F, A) and ssim_fn(F, B) in one batched call: [2, ...]."""
  xp = _xp(fused)
  return ssim_fn(xp.stack([fused, fused]), xp.stack([ir, vis]), **kwargs)


def _mef_ssim_single(ir: jax.Array, vis: jax.Array, fused: jax.Array) -> jax.Array:
  """Single-scale MEF-SSIM (Ma, Zeng & Wang 2015) of `fused` against the two-image stack, vectorised.

  The reference builds, per 11x11 patch, a desired patch from the sources' mean-removed patches (weighted by a
  structure-consistency power of their contrast, then rescaled to the largest contrast) and compares it with the
  fused patch by the Gaussian-weighted contrast-structure term. The desired patch is a linear combination of the
  source patches, so every statistic it needs is a combination of local (co)variances of the sources and F.
  """
  xp = _xp(ir)
  size, ws2 = 11, 121.0
  gauss = _matlab_gaussian_1d(size, 1.5)
  g_max = float(gauss.max() ** 2)
  m1, m2, e11, e22, e12 = _filter_valid(xp.stack([ir, vis, ir * ir, vis * vis, ir * vis]), _uniform_1d(size))
  var1, var2, cov12 = e11 - m1 * m1, e22 - m2 * m2, e12 - m1 * m2
  n1, n2 = xp.sqrt(xp.maximum(ws2 * var1, 0.0)), xp.sqrt(xp.maximum(ws2 * var2, 0.0))
  ed1, ed2 = n1 + 0.001, n2 + 0.001
  numerator = xp.sqrt(xp.maximum(ws2 * (var1 + var2 + 2.0 * cov12), 0.0))
  consistency = (numerator + _EPS) / (n1 + n2 + _EPS)
  consistency = xp.where(consistency > 1.0, 1.0 - _EPS, xp.where(consistency < 0.0, _EPS, consistency))
  power = xp.minimum(xp.tan(math.pi / 2.0 * consistency), 10.0)
  w1, w2 = (ed1 / size) ** power + _EPS, (ed2 / size) ** power + _EPS
  c1, c2 = w1 / (w1 + w2) / ed1, w2 / (w1 + w2) / ed2
  max_ed = xp.maximum(ed1, ed2)
  r_norm = xp.sqrt(xp.maximum(ws2 * (c1 * c1 * var1 + c2 * c2 * var2 + 2.0 * c1 * c2 * cov12), 0.0))
  scale = xp.where(r_norm > 0, max_ed / xp.where(r_norm > 0, r_norm, 1.0), 1.0)
  g1, g2, gf, g11, g22, gff, g12, g1f, g2f = _filter_valid(
      xp.stack([ir, vis, fused, ir * ir, vis * vis, fused * fused, ir * vis, ir * fused, vis * fused]), gauss)
  v1, v2, vf = g11 - g1 * g1, g22 - g2 * g2, gff - gf * gf
  k12, k1f, k2f = g12 - g1 * g2, g1f - g1 * gf, g2f - g2 * gf
  sigma1_sq = scale * scale * (c1 * c1 * v1 + c2 * c2 * v2 + 2.0 * c1 * c2 * k12)
  sigma12 = scale * (c1 * k1f + c2 * k2f)
  sigma2_sq = xp.maximum(vf, 0.0)
  # The desired patch has zero (uniform) mean and norm max_ed, so its weighted variance is at most
  # max(gauss) * max_ed^2; clamping to that (and Cauchy-Schwarz) keeps round-off in flat patches harmless.
  sigma1_sq = xp.clip(sigma1_sq, 0.0, g_max * max_ed * max_ed)
  bound = xp.sqrt(sigma1_sq * sigma2_sq)
  sigma12 = xp.clip(sigma12, -bound, bound)
  c = (0.03 * 255.0) ** 2
  q_map = (2.0 * sigma12 + c) / (sigma1_sq + sigma2_sq + c)
  return _mean_hw(q_map)


def _avg_pool2_symmetric(x: jax.Array) -> jax.Array:
  """imfilter(x, ones(2)/4, 'symmetric', 'same') then x(1:2:end, 1:2:end)."""
  padded = _pad_hw(x, 0, 1, 'symmetric')
  h, w = x.shape[-2:]
  s = padded[..., :h, :w] + padded[..., 1:h + 1, :w] + padded[..., :h, 1:w + 1] + padded[..., 1:h + 1, 1:w + 1]
  return (s / 4.0)[..., ::2, ::2]


def mef_ssim(fused: jax.Array, ir: jax.Array, vis: jax.Array, *, levels: int = 1) -> jax.Array:
  """(Multi-scale) MEF-SSIM of F against [A, B] on 0..255 (Tang's analysis_ms_ssim.m / mef_ssim.m).

  levels = 3 is Tang's MS-SSIM: weights (0.0448, 0.2856, 0.3001) normalised, score = prod Q_l^w_l. NaN when the
  coarsest level is narrower than the 11x11 window (the reference returns -Inf) or when a coarse level's mean
  quality is negative (unrelated images; MATLAB's power then returns a complex number).
  """
  xp = _xp(fused)
  if not 1 <= levels <= 3:
    raise ValueError(f'MEF-SSIM has weights for 1 to 3 levels, got {levels}')
  h, w = fused.shape[-2:]
  if min(h, w) / 2 ** (levels - 1) < 11:
    return xp.full(fused.shape[:-2], xp.nan, fused.dtype)
  weights = np.array([0.0448, 0.2856, 0.3001][:levels])
  weights = weights / weights.sum()
  score = xp.ones(fused.shape[:-2], fused.dtype)
  for level in range(levels):
    if level:
      ir, vis, fused = _avg_pool2_symmetric(ir), _avg_pool2_symmetric(vis), _avg_pool2_symmetric(fused)
    score = score * _mef_ssim_single(ir, vis, fused) ** weights[level]
  return score


# ----------------------------------------------------------------------------------------------------------------
# Dialects.


def _tang_common(f, a, b) -> dict[str, jax.Array]:
  return {
      'EN': entropy(f),
      'MI': mutual_information(f, a, b, log_base=2.0, merge_top_level=True),
      'AG': average_gradient(f, tang_normalization=True),
      'CC': correlation_coefficient(f, a, b),
      'SCD': scd(f, a, b),
      'PSNR': psnr_tang(f, a, b),
      'MSE': mse(f, a, b) / 255.0 ** 2,
      'MS_SSIM': mef_ssim(f, a, b, levels=3),
  }


def _tang2023(f, a, b) -> dict[str, jax.Array]:
  xp = _xp(f)
  out = _tang_common(f, a, b)
  out.update({
      'SD': standard_deviation(f),
      'SF': spatial_frequency(f),
      'VIF': vif(f, a, b),
      'Qabf': qabf(f, a, b),
      'SSIM': 0.5 * xp.sum(_ssim_two_sources(ssim_matlab, f, a, b), axis=0),
      # analysis_Reference.m calls analysis_nabf(ir, vis, fused) against the signature (fused, src1, src2).
      'Nabf': nabf(a, b, f),
  })
  return out


def _tang2022(f, a, b) -> dict[str, jax.Array]:
  out = _tang_common(f, a, b)
  unit = lambda x: x / 255.0
  out.update({
      'SD': standard_deviation(f, uint8_saturation=True),
      'SF': spatial_frequency(unit(f)),
      'VIF': vif(f, a, b, saturate_first_scale=True),
      'Qabf': qabf(unit(f), unit(a), unit(b)),
      'SSIM': mef_ssim(f, a, b, levels=1),
      # On [0, 1] data no gradient reaches the weight threshold 2, so the weighting is uniform.
      'Nabf': nabf(unit(f), unit(a), unit(b)),
  })
  return out


def _cddfuse(f, a, b) -> dict[str, jax.Array]:
  xp = _xp(f)
  return {
      'EN': entropy(f),
      'SD': standard_deviation(f),
      'SF': spatial_frequency(f),
      'AG': average_gradient(f, tang_normalization=False),
      'MI': mutual_information(f, a, b, log_base=math.e, merge_top_level=False),
      'CC': correlation_coefficient(f, a, b),
      'SCD': scd(f, a, b),
      'PSNR': psnr_cddfuse(f, a, b),
      'MSE': mse(f, a, b),
      'VIF': vif(f, a, b, nan_to_one=True),
      'Qabf': qabf(f, a, b),
      'SSIM': xp.sum(_ssim_two_sources(ssim_skimage, f, a, b), axis=0),
      'SSIM_FILM': xp.sum(_ssim_two_sources(ssim_skimage, f, a, b, data_range=255.0), axis=0),
  }


_DIALECT_FNS: Mapping[str, Callable[..., dict[str, jax.Array]]] = {
    'tang2023': _tang2023, 'tang2022': _tang2022, 'cddfuse': _cddfuse}

_SHARED_NAMES = ('EN', 'SD', 'SF', 'AG', 'MI', 'CC', 'SCD', 'PSNR', 'MSE', 'VIF', 'Qabf', 'SSIM')
# Column order of every report; compute_metrics returns exactly these keys per dialect.
METRIC_NAMES: Mapping[str, tuple[str, ...]] = {
    'tang2023': _SHARED_NAMES + ('Nabf', 'MS_SSIM'),
    'tang2022': _SHARED_NAMES + ('Nabf', 'MS_SSIM'),
    'cddfuse': _SHARED_NAMES + ('SSIM_FILM',),
}


def check_dialect(dialect: str) -> str:
  if dialect not in _DIALECT_FNS:
    raise ValueError(f'unknown metric dialect {dialect!r}; choose one of {", ".join(DIALECTS)}')
  return dialect


@functools.partial(jax.jit, static_argnames=('dialect',))
def dialect_metrics(fused: jax.Array, ir: jax.Array, vis: jax.Array, dialect: str = DEFAULT_DIALECT
                    ) -> dict[str, jax.Array]:
  """All metrics of one dialect for float [..., H, W] gray JAX arrays in 0..255 (jit-compiled per shape/dtype)."""
  return _DIALECT_FNS[check_dialect(dialect)](fused, ir, vis)


def _as_gray_stack(name: str, img, ndim: int) -> np.ndarray:
  arr = np.asarray(img)
  if arr.ndim != ndim or arr.dtype != np.uint8:
    raise ValueError(f'{name} must be a {ndim}-D uint8 gray array, got shape {arr.shape} and dtype {arr.dtype}')
  return arr


def compute_metrics_batch(fused_u8, ir_u8, vis_u8, dialect: str = DEFAULT_DIALECT, *,
                          dtype=np.float64) -> dict[str, np.ndarray]:
  """Metrics of N same-size triples: uint8 [N, H, W] each -> {name: float array [N]}.

  float64 (the validated, default precision) runs on the host with numpy/scipy and compiles nothing; float32 runs
  the jitted JAX functions on the default device (one compilation per image shape).
  """
  check_dialect(dialect)
  arrays = [_as_gray_stack(n, x, 3) for n, x in (('fused', fused_u8), ('ir', ir_u8), ('vis', vis_u8))]
  if not arrays[0].shape == arrays[1].shape == arrays[2].shape:
    raise ValueError(f'fused, ir and vis shapes differ: {[a.shape for a in arrays]}')
  if np.dtype(dtype) == np.float64:
    # Both branches of every guarded division are evaluated (as in JAX); the unused one may divide by zero.
    with np.errstate(divide='ignore', invalid='ignore'):
      out = _DIALECT_FNS[dialect](*(a.astype(np.float64) for a in arrays))
  else:
    out = dialect_metrics(*(jnp.asarray(a, dtype) for a in arrays), dialect=dialect)
  return {k: np.asarray(v, np.float64) for k, v in out.items()}


def compute_metrics(fused_u8, ir_u8, vis_u8, dialect: str = DEFAULT_DIALECT, *, dtype=np.float64
                    ) -> dict[str, float]:
  """All metrics of `dialect` for one (fused, ir, vis) triple of HxW uint8 gray images, as a flat dict."""
  arrays = [_as_gray_stack(n, x, 2)[None] for n, x in (('fused', fused_u8), ('ir', ir_u8), ('vis', vis_u8))]
  batch = compute_metrics_batch(*arrays, dialect=dialect, dtype=dtype)
  return {k: float(v[0]) for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------------------------
# Gray conversion of colour images, per evaluator.

# MATLAB rgb2gray: the first row of inv([1 .956 .621; 1 -.272 -.647; 1 -1.106 1.703]).
_MATLAB_GRAY = np.linalg.inv(np.array([[1.0, 0.956, 0.621], [1.0, -0.272, -0.647], [1.0, -1.106, 1.703]]))[0]


def to_gray_u8(img: np.ndarray, dialect: str = DEFAULT_DIALECT) -> np.ndarray:
  """HxW or HxWx3 uint8 -> HxW uint8 gray, converted the way the dialect's evaluator does.

  Tang: MATLAB rgb2gray (coefficients 0.2989/0.5870/0.1140, rounded half away from zero). CDDFuse: OpenCV
  BGR2GRAY on the float32 image (0.299/0.587/0.114 in float32), then numpy's round (half to even).
  """
  check_dialect(dialect)
  arr = np.asarray(img)
  if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
    raise ValueError(f'expected an HxW or HxWx3 uint8 image, got shape {arr.shape} and dtype {arr.dtype}')
  if arr.ndim == 2:
    return arr
  if dialect == 'cddfuse':
    rgb = arr.astype(np.float32)
    gray = (np.float32(0.299) * rgb[..., 0] + np.float32(0.587) * rgb[..., 1]
            + np.float32(0.114) * rgb[..., 2])
    return np.clip(np.round(gray), 0, 255).astype(np.uint8)
  gray = arr.astype(np.float64) @ _MATLAB_GRAY
  return np.clip(np.floor(gray + 0.5), 0, 255).astype(np.uint8)
