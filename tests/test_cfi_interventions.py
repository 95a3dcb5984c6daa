"""The CFI interventions: hole statistics, mask rasterisation, complementary/shared/dropout views."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfi_jax import interventions

SIZE = 64


def _numpy_masks(holes: interventions.Holes, height: int, width: int) -> np.ndarray:
  """Independent rasteriser: array slicing for squares, an ogrid distance test for disks."""
  active, is_square, row, col, size = (np.asarray(a) for a in holes)
  masks = np.ones((active.shape[0], height, width, 1), np.float32)
  yy, xx = np.ogrid[:height, :width]
  for b in range(active.shape[0]):
    for k in np.flatnonzero(active[b]):
      r, c, s = row[b, k], col[b, k], size[b, k]
      if is_square[b, k]:
        masks[b, r:r + s, c:c + s] = 0
      else:
        masks[b, (yy - r) ** 2 + (xx - c) ** 2 <= s * s] = 0
  return masks


def test_hole_parameters_follow_the_release_distribution():
  holes = interventions.sample_holes(jax.random.key(0), 20000, SIZE, SIZE)
  active, is_square, row, col, size = (np.asarray(a) for a in holes)
  counts = active.sum(axis=1)
  assert counts.min() == 1 and counts.max() == 6
  # Uniform over 1..6: each count within 1.5 points of 1/6 (std of a frequency here is ~0.26 points).
  np.testing.assert_allclose(np.bincount(counts, minlength=7)[1:] / counts.size, 1 / 6, atol=0.015)
  # Active holes are a prefix of the K slots.
  assert (np.sort(active, axis=1)[:, ::-1] == active).all()
  sq = is_square[active]
  assert abs(sq.mean() - 0.7) < 0.01
  assert (size[active][sq] == 16).all() and (size[active][~sq] == 8).all()
  # Inclusive placement ranges, and both ends are reached.
  for coord in (row[active], col[active]):
    assert coord[sq].min() == 0 and coord[sq].max() == SIZE - 16
    assert coord[~sq].min() == 8 and coord[~sq].max() == SIZE - 8


def test_hole_ranges_are_parameters():
  config = interventions.HoleConfig(square_size=(4, 10), disk_radius=(2, 5), num_holes=(2, 3), p_square=0.25)
  holes = interventions.sample_holes(jax.random.key(1), 5000, 40, 30, config)
  active, is_square, row, col, size = (np.asarray(a) for a in holes)
  assert active.shape == (5000, 3) and set(active.sum(axis=1)) == {2, 3}
  sq = is_square[active]
  assert abs(sq.mean() - 0.25) < 0.02
  side, radius = size[active][sq], size[active][~sq]
  assert set(side) == set(range(4, 11)) and set(radius) == set(range(2, 6))
  # Squares stay inside, disk centres at least one radius from the border.
  assert (row[active][sq] + side <= 40).all() and (col[active][sq] + side <= 30).all()
  assert (row[active][~sq] >= radius).all() and (row[active][~sq] + radius <= 40).all()
  assert (col[active][~sq] >= radius).all() and (col[active][~sq] + radius <= 30).all()


def test_masks_rasterise_the_sampled_holes():
  holes = interventions.sample_holes(jax.random.key(2), 300, SIZE, 48)
  masks = np.asarray(interventions.rasterize_holes(holes, SIZE, 48))
  np.testing.assert_array_equal(masks, _numpy_masks(holes, SIZE, 48))
  np.testing.assert_array_equal(masks, interventions.hole_masks(jax.random.key(2), 300, SIZE, 48))
  # A lone 16x16 square hides 256 pixels; a lone radius-8 disk the 197 lattice points within distance 8.
  one = lambda square: interventions.Holes(*(jnp.asarray([[v]]) for v in (True, square, 20, 20, 16 if square else 8)))
  assert (1 - np.asarray(interventions.rasterize_holes(one(True), SIZE, SIZE))).sum() == 256
  assert (1 - np.asarray(interventions.rasterize_holes(one(False), SIZE, SIZE))).sum() == 197


def test_complementary_masks_split_overlaps_by_a_fair_coin():
  key = jax.random.key(3)
  m_vis, m_ir = (np.asarray(m) for m in interventions.complementary_masks(key, 2000, 32, 32))
  assert set(np.unique(m_vis)) <= {0.0, 1.0} and set(np.unique(m_ir)) <= {0.0, 1.0}
  assert not ((m_vis == 0) & (m_ir == 0)).any()
  # The two underlying masks are independent draws from the first two sub-keys.
  k_vis, k_ir, _ = jax.random.split(key, 3)
  plain_vis, plain_ir = (np.asarray(interventions.hole_masks(k, 2000, 32, 32)) for k in (k_vis, k_ir))
  overlap = (plain_vis == 0) & (plain_ir == 0)
  np.testing.assert_array_equal(m_vis[~overlap], plain_vis[~overlap])
  np.testing.assert_array_equal(m_ir[~overlap], plain_ir[~overlap])
  # Every overlap pixel stays hidden in exactly one modality, each with probability 1/2.
  assert overlap.sum() > 10000
  np.testing.assert_array_equal(m_vis[overlap] + m_ir[overlap], 1.0)
  assert abs(m_vis[overlap].mean() - 0.5) < 0.02


def _views(key, config=None, **strategies):
  ones = jnp.ones((3, 32, 32, 1))
  kwargs = {} if config is None else {'config': config}
  return (np.asarray(v) for v in interventions.build_views(key, ones, 0.5 * ones, **strategies, **kwargs))


def test_views_are_stacked_in_order_with_exact_masks():
  vis, ir = _views(jax.random.key(4))
  names = interventions.view_names()
  assert names == ('clean', 'complementary', 'random', 'vis_dropped', 'ir_dropped')
  assert vis.shape == ir.shape == (5, 3, 32, 32, 1)
  np.testing.assert_array_equal(vis[0], 1.0)
  np.testing.assert_array_equal(ir[0], 0.5)
  # Complementary: each view is hidden somewhere, never both at once.
  assert (vis[1] == 0).any() and (ir[1] == 0).any() and not ((vis[1] == 0) & (ir[1] == 0)).any()
  # Random: one shared mask (vis = 1 and ir = 0.5 everywhere, so the masks are vis and 2 * ir).
  np.testing.assert_array_equal(vis[2], 2 * ir[2])
  assert (vis[2] == 0).any()
  # Dropout: exactly zero in the dropped modality, untouched in the other.
  np.testing.assert_array_equal(vis[3], 0.0)
  np.testing.assert_array_equal(ir[3], 0.5)
  np.testing.assert_array_equal(vis[4], 1.0)
  np.testing.assert_array_equal(ir[4], 0.0)


def test_views_are_deterministic_per_key_and_strategies_are_independent():
  full_vis, _ = _views(jax.random.key(5))
  again_vis, _ = _views(jax.random.key(5))
  other_vis, _ = _views(jax.random.key(6))
  np.testing.assert_array_equal(full_vis, again_vis)
  assert (full_vis[1:3] != other_vis[1:3]).any()
  # Switching strategies off shrinks the stack and leaves the others' masks unchanged.
  no_comp, _ = _views(jax.random.key(5), complementary=False, dropout=False)
  assert no_comp.shape[0] == 2
  np.testing.assert_array_equal(no_comp[1], full_vis[2])
  clean_only, _ = _views(jax.random.key(5), complementary=False, random=False, dropout=False)
  assert clean_only.shape[0] == 1
  assert interventions.view_names(complementary=False, random=False) == ('clean', 'vis_dropped', 'ir_dropped')


def test_bad_hole_configs_and_small_images_are_rejected():
  with pytest.raises(ValueError, match='num_holes'):
    interventions.HoleConfig(num_holes=(0, 3))
  with pytest.raises(ValueError, match='p_square'):
    interventions.HoleConfig(p_square=1.5)
  with pytest.raises(ValueError, match='too small'):
    interventions.hole_masks(jax.random.key(0), 1, 12, 64)
  with pytest.raises(ValueError, match=r'\[B,H,W,1\]'):
    interventions.build_views(jax.random.key(0), jnp.ones((1, 32, 32, 1)), jnp.ones((1, 32, 32, 3)))
