"""ISFuse losses on small hand-computed cases, the config switches and the ablation presets."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from cfi_jax import interventions
from cfi_jax import losses


def _image(values) -> jnp.ndarray:
  """A [1,H,W,1] image from a 2-D list."""
  return jnp.asarray(values, jnp.float32)[None, :, :, None]


def _entropy(p: float) -> float:
  return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def test_laplacian8_uses_zero_padding():
  impulse = _image([[0, 0, 0], [0, 1, 0], [0, 0, 0]])
  np.testing.assert_array_equal(losses.laplacian8(impulse)[0, :, :, 0], [[1, 1, 1], [1, -8, 1], [1, 1, 1]])
  # On a constant image only the border sees the zero padding: corners have 3 neighbours, edges 5.
  ones = _image(np.ones((3, 4)))
  np.testing.assert_array_equal(losses.laplacian8(ones)[0, :, :, 0],
                                [[-5, -3, -3, -5], [-3, 0, 0, -3], [-5, -3, -3, -5]])


def test_fidelity_loss_hand_case():
  fused, vis, ir = _image(np.full((3, 3), 0.5)), _image(np.zeros((3, 3))), _image(np.ones((3, 3)))
  # |Lap F| = 2.5 at corners, 1.5 at edges, 0 at the centre; max(|Lap vis|, |Lap ir|) = 5, 3, 0.
  # Gradient term = (4 * 2.5 + 4 * 1.5) / 9 = 16 / 9.
  loss, terms = losses.fidelity_loss(fused, vis, ir, lambda_grad=1.0)
  np.testing.assert_allclose(terms['l1_vis'], 0.5, rtol=1e-6)
  np.testing.assert_allclose(terms['l1_ir'], 0.5, rtol=1e-6)
  np.testing.assert_allclose(terms['grad'], 16 / 9, rtol=1e-6)
  np.testing.assert_allclose(loss, 1 + 16 / 9, rtol=1e-6)
  loss_half, _ = losses.fidelity_loss(fused, vis, ir, lambda_grad=0.5)
  np.testing.assert_allclose(loss_half, 1 + 8 / 9, rtol=1e-6)


def test_fidelity_loss_max_intensity_prefers_the_brighter_source():
  vis, ir = _image([[0.2, 0.8], [0.8, 0.2]]), _image([[0.6, 0.4], [0.4, 0.6]])
  brighter, average = jnp.maximum(vis, ir), (vis + ir) / 2
  _, release_at_max = losses.fidelity_loss(brighter, vis, ir, lambda_grad=0.0)
  _, release_at_average = losses.fidelity_loss(average, vis, ir, lambda_grad=0.0)
  # The release's two L1 terms cannot tell the maximum from the average (both lie between the sources) ...
  np.testing.assert_allclose(release_at_max['l1_vis'] + release_at_max['l1_ir'],
                             release_at_average['l1_vis'] + release_at_average['l1_ir'], rtol=1e-6)
  # ... the 'max' term is zero at the maximum and |max - average| = 0.2 per pixel at the average.
  loss_max, terms = losses.fidelity_loss(brighter, vis, ir, lambda_grad=0.0, intensity='max')
  np.testing.assert_allclose([loss_max, terms['l1_max']], [0.0, 0.0], atol=1e-7)
  loss_average, _ = losses.fidelity_loss(average, vis, ir, lambda_grad=0.0, intensity='max')
  np.testing.assert_allclose(loss_average, 0.2, rtol=1e-6)


def test_gradient_of_max_shares_the_intensity_terms_minimiser_and_the_release_term_does_not():
  rng = np.random.default_rng(0)
  vis, ir = (jnp.asarray(rng.uniform(0.0, 1.0, (2, 9, 9, 1)), jnp.float32) for _ in range(2))
  brighter = jnp.maximum(vis, ir)
  loss, terms = losses.fidelity_loss(brighter, vis, ir, lambda_grad=1.0, intensity='max', gradient='of_max')
  np.testing.assert_allclose([loss, terms['grad']], [0.0, 0.0], atol=1e-6)
  # Off the maximum the term is the Laplacian's L1: a pixel raised by d changes Lap there by -8d and at each of its
  # 8 neighbours by d (zero padding), 16d in all (a centre pixel of a 9x9 image, 2 images).
  raised = brighter.at[0, 4, 4, 0].add(0.1)
  _, terms = losses.fidelity_loss(raised, vis, ir, lambda_grad=1.0, intensity='max', gradient='of_max')
  np.testing.assert_allclose(terms['grad'], 16 * 0.1 / (2 * 81), rtol=1e-5)
  # The release's term asks for the larger source Laplacian's magnitude: at the maximum it is far from zero.
  _, release_terms = losses.fidelity_loss(brighter, vis, ir, lambda_grad=1.0, intensity='max')
  assert release_terms['grad'] > 0.1


def test_loss_config_rejects_an_unknown_intensity_or_gradient_term():
  with pytest.raises(ValueError, match='intensity'):
    losses.LossConfig(intensity='mean')
  with pytest.raises(ValueError, match='gradient'):
    losses.LossConfig(gradient='sobel')
  with pytest.raises(ValueError, match="intensity='max'"):
    losses.LossConfig(gradient='of_max')


def test_gate_map_averages_the_upsampled_scales():
  gates = [jnp.full((2, 2, 2, 1), 0.2), jnp.full((2, 4, 4, 1), 0.4), jnp.full((2, 8, 8, 1), 0.9)]
  g = losses.gate_map(gates, (8, 8))
  assert g.shape == (2, 8, 8, 1)
  np.testing.assert_allclose(g, 0.5, rtol=1e-6)
  # Bilinear (align_corners=False) upsampling of [0, 1] columns: edge pixels clamp, inner ones interpolate.
  ramp = jnp.asarray([[0.0, 1.0]])[None, :, :, None]
  np.testing.assert_allclose(losses.gate_map([ramp], (1, 4))[0, 0, :, 0], [0, 0.25, 0.75, 1], atol=1e-6)


def test_invariance_loss_hand_case_and_entropy_sign():
  clean = jnp.zeros((2, 4, 4, 1))
  # Intervention 1: output off by 0.5 everywhere, gate 0.4 at every scale.
  gates_1 = [jnp.full((2, s, s, 1), 0.4) for s in (1, 2, 4)]
  # Intervention 2: output off by 0.2, gate 0.1 in sample 0 and 0.5 in sample 1 (area is per sample).
  per_sample = jnp.asarray([0.1, 0.5])[:, None, None, None]
  gates_2 = [jnp.broadcast_to(per_sample, (2, s, s, 1)) for s in (1, 2, 4)]
  intervened = [(clean + 0.5, gates_1), (clean + 0.2, gates_2)]
  c = (0.5 * 0.4 + 0.2 * 0.3) / 2
  a = (0.1 + (0.2 + 0.2) / 2) / 2
  e = (_entropy(0.4) + (_entropy(0.1) + _entropy(0.5)) / 2) / 2
  loss, parts = losses.invariance_loss(clean, intervened, eta=0.3, entropy_sign='release')
  np.testing.assert_allclose([parts['consistency'], parts['area'], parts['entropy']], [c, a, e], rtol=1e-5)
  np.testing.assert_allclose(loss, c + a - e, rtol=1e-5)
  loss_paper, _ = losses.invariance_loss(clean, intervened, eta=0.3, entropy_sign='paper')
  np.testing.assert_allclose(loss_paper, c + a + e, rtol=1e-5)


def test_binary_entropy_is_clamped_at_saturated_gates():
  h = np.asarray(losses.binary_entropy(jnp.asarray([0.0, 1.0, 0.5])))
  # Unclamped, 0 log 0 would be NaN. 1 - 1e-6 rounds in float32 (as in the release), hence the 2% tolerance.
  eps = 1e-6
  np.testing.assert_allclose(h[:2], -(eps * math.log(eps) + (1 - eps) * math.log(1 - eps)), rtol=2e-2)
  np.testing.assert_allclose(h[2], math.log(2), rtol=1e-6)


def test_necessity_loss_release_and_hinge():
  fused = jnp.full((1, 2, 2, 1), 0.5)
  ir_only, vis_only = fused + 0.1, fused - 0.3
  np.testing.assert_allclose(losses.necessity_loss(fused, ir_only, vis_only), 0.4, rtol=1e-6)
  # Hinge with margin 0.2: max(0, 0.2 - 0.1) + max(0, 0.2 - 0.3) = 0.1.
  np.testing.assert_allclose(losses.necessity_loss(fused, ir_only, vis_only, mode='hinge', margin=0.2), 0.1,
                             rtol=1e-5)


def _stacked(names, size=4):
  """Stacked outputs with a known constant value per view and constant gates."""
  value = {'clean': 0.5, 'complementary': 0.7, 'random': 0.4, 'vis_dropped': 0.6, 'ir_dropped': 0.2}
  fused = jnp.stack([jnp.full((1, size, size, 1), value[n]) for n in names])
  gates = [jnp.full((len(names), 1, s, s, 1), 0.4) for s in (1, 2, size)]
  return fused, gates


def test_total_loss_combines_the_terms_with_their_weights():
  vis, ir = jnp.zeros((1, 4, 4, 1)), jnp.ones((1, 4, 4, 1))
  config = losses.LossConfig()
  fused, gates = _stacked(config.view_names)
  loss, terms = losses.total_loss(fused, gates, vis, ir, config)
  loss_f, _ = losses.fidelity_loss(fused[0], vis, ir)
  inv = (0.2 * 0.4 + 0.1 * 0.4) / 2 + 0.1 - _entropy(0.4)
  nec = 0.1 + 0.3
  np.testing.assert_allclose(terms['loss_inv'], inv, rtol=1e-5)
  np.testing.assert_allclose(terms['loss_nec'], nec, rtol=1e-5)
  np.testing.assert_allclose(loss, loss_f + 0.1 * inv + 0.05 * nec, rtol=1e-5)

  # Without L_inv the masking views still run (and are reported) but do not enter the loss.
  no_inv, _ = losses.ablation('no_inv')
  loss_no_inv, terms_no_inv = losses.total_loss(fused, gates, vis, ir, no_inv)
  np.testing.assert_allclose(loss_no_inv, loss_f + 0.05 * nec, rtol=1e-5)
  np.testing.assert_allclose(terms_no_inv['loss_inv'], inv, rtol=1e-5)

  # Only the random view: L_inv is its own terms, L_nec is absent.
  rand_only, _ = losses.ablation('rand_only')
  fused_r, gates_r = _stacked(rand_only.view_names)
  loss_r, terms_r = losses.total_loss(fused_r, gates_r, vis, ir, rand_only)
  inv_r = 0.1 * 0.4 + 0.1 - _entropy(0.4)
  np.testing.assert_allclose(loss_r, loss_f + 0.1 * inv_r, rtol=1e-5)
  assert 'loss_nec' not in terms_r

  with pytest.raises(ValueError, match='expected 5 stacked views'):
    losses.total_loss(fused_r, gates_r, vis, ir, config)


def test_ablation_presets():
  views = {name: losses.ablation(name)[0].view_names for name in losses.ABLATIONS}
  all_views = interventions.view_names()
  assert views['full'] == views['no_inv'] == views['no_nec'] == views['no_inv_no_nec'] == views['no_cfi'] == all_views
  assert views['lf_only'] == ('clean',)
  assert views['comp_only'] == ('clean', 'complementary')
  assert views['rand_only'] == ('clean', 'random')
  assert views['dropout_only'] == ('clean', 'vis_dropped', 'ir_dropped')
  config, model_kwargs = losses.ablation('no_cfi')
  assert model_kwargs == {'use_cfi': False} and config == losses.LossConfig()
  assert losses.ablation('full')[1] == {}
  assert not losses.ablation('no_inv_no_nec')[0].use_inv and not losses.ablation('no_inv_no_nec')[0].use_nec
  assert losses.ablation('full', alpha=0.5)[0].alpha == 0.5
  with pytest.raises(ValueError, match='unknown ablation'):
    losses.ablation('no_such')


def test_loss_config_is_hashable_and_validated():
  assert hash(losses.LossConfig()) == hash(losses.LossConfig())
  assert hash(losses.LossConfig(alpha=0.2)) != hash(losses.LossConfig())
  assert losses.LossConfig(use_nec=False, dropout=False).view_names == ('clean', 'complementary', 'random')
  with pytest.raises(ValueError, match='entropy_sign'):
    losses.LossConfig(entropy_sign='plus')
  with pytest.raises(ValueError, match='nec_mode'):
    losses.LossConfig(nec_mode='max')
  with pytest.raises(ValueError, match='use_inv needs'):
    losses.LossConfig(complementary=False, random=False)
  with pytest.raises(ValueError, match='use_nec needs'):
    losses.LossConfig(dropout=False)
