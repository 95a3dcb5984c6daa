"""ISFuse shapes, PyTorch-compatible resampling ops, the no-CFI ablation, BatchNorm modes and the bf16 option."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfi_jax import ops
from cfi_jax.model import ISFuse
from cfi_test_utils import random_variables


@jax.jit
def _eval(variables, vis, ir):
  return ISFuse(features=8).apply(variables, vis, ir, train=False)


def _images(shape, seed):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.random(shape, np.float32)), jnp.asarray(rng.random(shape, np.float32))


@pytest.mark.parametrize('height,width', [(37, 53), (20, 12)])
def test_output_shapes_for_odd_sizes(height, width):
  vis, ir = _images((2, height, width, 1), seed=height)
  out = _eval(random_variables(ISFuse(features=8)), vis, ir)
  # MaxPool2 floors, so scales are H, H//2, H//4 like PyTorch's MaxPool2d(2).
  sizes = [(height // 4, width // 4), (height // 2, width // 2), (height, width)]
  assert out.fused.shape == (2, height, width, 1)
  assert [f.shape for f in out.features] == [(2, h, w, 8) for h, w in sizes]
  assert [g.shape for g in out.gates] == [(2, h, w, 1) for h, w in sizes]


def test_parameter_count_matches_release():
  # spec §1.1: the active network in best.pth has 192,388 parameters.
  variables = random_variables(ISFuse())
  assert sum(x.size for x in jax.tree.leaves(variables['params'])) == 192_388


def test_adaptive_pool_divisible_case_is_block_mean():
  x = np.random.default_rng(0).random((1, 16, 24, 3), np.float32)
  expected = x.reshape(1, 8, 2, 8, 3, 3).mean(axis=(2, 4))
  np.testing.assert_allclose(ops.adaptive_avg_pool(jnp.asarray(x), (8, 8)), expected, rtol=1e-6, atol=1e-6)


def test_adaptive_pool_bins_by_hand():
  # H=3 -> 2 bins: PyTorch edges [floor(0), ceil(1.5)) = [0, 2) and [floor(1.5), ceil(3)) = [1, 3): overlapping.
  x = jnp.asarray([1.0, 2.0, 4.0]).reshape(1, 3, 1, 1)
  np.testing.assert_allclose(ops.adaptive_avg_pool(x, (2, 1))[0, :, 0, 0], [1.5, 3.0])


@pytest.mark.parametrize('size', [(37, 53), (5, 3), (16, 16), (9, 13), (8, 7)])
def test_adaptive_pool_matches_torch(size):
  torch = pytest.importorskip('torch')
  x = np.random.default_rng(1).random((2, *size, 3), np.float32)
  expected = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), (8, 8))
  np.testing.assert_allclose(ops.adaptive_avg_pool(jnp.asarray(x), (8, 8)),
                             expected.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('size,new_size', [((9, 13), (18, 26)), ((18, 26), (37, 53)), ((5, 3), (10, 7)),
                                           ((37, 53), (9, 13)), ((64, 64), (32, 32)), ((7, 11), (3, 2))])
def test_resize_bilinear_matches_torch(size, new_size):
  torch = pytest.importorskip('torch')
  x = np.random.default_rng(2).random((2, *size, 3), np.float32)
  expected = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=new_size,
                                             mode='bilinear', align_corners=False)
  np.testing.assert_allclose(ops.resize_bilinear(jnp.asarray(x), new_size),
                             expected.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-6)


def test_resize_bilinear_by_hand():
  # 2 -> 4 with half-pixel centres: source positions -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1).
  x = jnp.asarray([0.0, 4.0]).reshape(1, 1, 2, 1)
  np.testing.assert_allclose(ops.resize_bilinear(x, (1, 4))[0, 0, :, 0], [0.0, 1.0, 3.0, 4.0])


def test_without_cfi_sums_features_and_has_unit_gates():
  model = ISFuse(features=8, use_cfi=False)
  vis, ir = _images((2, 20, 12, 1), seed=3)
  variables = random_variables(model)
  assert set(variables['params']['cfi3']) == {'refine'}  # No projections or gate head when the CFI is off.
  # With the CFI off the decoder only sees f_vis + f_ir, so swapping the inputs and the encoders changes nothing.
  swap = lambda tree: {**tree, 'encoder_ir': tree['encoder_vis'], 'encoder_vis': tree['encoder_ir']}
  swapped_variables = jax.tree.map(swap, variables, is_leaf=lambda t: isinstance(t, dict) and 'encoder_ir' in t)
  apply = jax.jit(lambda v, a, b: model.apply(v, a, b, train=False))
  out = apply(variables, jnp.concatenate([vis, ir]), jnp.concatenate([ir, vis]))
  swapped = apply(swapped_variables, jnp.concatenate([ir, vis]), jnp.concatenate([vis, ir]))
  assert all(g.shape[-1] == 1 and np.all(g == 1) for g in out.gates)
  np.testing.assert_allclose(swapped.fused, out.fused, atol=1e-6)


def test_batchnorm_train_updates_stats_and_eval_does_not():
  model = ISFuse(features=8)
  vis, ir = _images((2, 20, 12, 1), seed=4)
  variables = random_variables(model)
  train = jax.jit(lambda v, a, b: model.apply(v, a, b, train=True, mutable=['batch_stats']))
  _, updates = train(variables, vis, ir)
  old = variables['batch_stats']['encoder_ir']['stage1']['block0']['bn']
  new = updates['batch_stats']['encoder_ir']['stage1']['block0']['bn']
  # momentum 0.9 (PyTorch 0.1): new = 0.9 * old + 0.1 * mean of the first IR conv over batch and pixels.
  conv = variables['params']['encoder_ir']['stage1']['block0']['conv']
  conv_out = jax.lax.conv_general_dilated(ir, conv['kernel'], (1, 1), ((1, 1), (1, 1)),
                                          dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + conv['bias']
  np.testing.assert_allclose(new['mean'], 0.9 * old['mean'] + 0.1 * conv_out.mean(axis=(0, 1, 2)), rtol=1e-5,
                             atol=1e-6)
  assert not np.allclose(new['var'], old['var'])
  # Eval mode uses running stats: each image's output does not depend on the rest of the batch.
  eval_pair = _eval(variables, vis, ir).fused
  eval_single = _eval(variables, vis[:1], ir[:1]).fused
  np.testing.assert_allclose(eval_pair[:1], eval_single, atol=1e-6)


def test_bfloat16_compute_stays_close_to_float32():
  model32 = ISFuse(features=8)
  model16 = ISFuse(features=8, dtype=jnp.bfloat16)
  vis, ir = _images((1, 20, 12, 1), seed=5)  # Shapes shared with other tests reuse _eval's compilation.
  variables = random_variables(model32)
  assert jax.tree.map(lambda x: (x.shape, x.dtype), random_variables(model16)) == jax.tree.map(
      lambda x: (x.shape, x.dtype), variables)
  out32 = _eval(variables, vis, ir)
  out16 = jax.jit(lambda v, a, b: model16.apply(v, a, b, train=False))(variables, vis, ir)
  assert out16.fused.dtype == jnp.float32 and out16.features[0].dtype == jnp.bfloat16
  assert float(jnp.abs(out16.fused - out32.fused).max()) < 2e-2
  assert float(jnp.abs(out16.fused - out32.fused).max()) > 0  # The option really computes in bf16.
