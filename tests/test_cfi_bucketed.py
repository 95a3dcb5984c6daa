"""Bucketed (padded, one program per bucket) ISFuse inference equals the unpadded network; too-small images."""
import jax
import numpy as np
import pytest

from cfi_jax import bucketed
from cfi_jax import inference
from cfi_jax.model import ISFuse
from cfi_test_utils import random_variables


@jax.jit
def _unpadded(variables, vis, ir):
  return ISFuse(features=8).apply(variables, vis, ir, train=False).fused


def _pair(size, seed):
  rng = np.random.default_rng(seed)
  return rng.random(size, np.float32), rng.random(size, np.float32)


@pytest.mark.parametrize('multiple, sizes', [
    # Odd sizes (max-pool floors), sizes below the 8x8 CFI pooling, the minimum, and one filling its bucket.
    (64, [(37, 53), (20, 12), (4, 4), (64, 33)]),
    # A bucket only a few pixels larger than its image.
    (4, [(37, 53)]),
])
def test_bucketed_batch_equals_unpadded_network(multiple, sizes):
  variables = random_variables(ISFuse(features=8), seed=3)
  pairs = [_pair(s, i) for i, s in enumerate(sizes)]
  fused = inference.BucketedFuser(ISFuse(features=8), variables, multiple=multiple).fuse_batch(pairs)
  for (vis, ir), out in zip(pairs, fused):
    expected = np.asarray(_unpadded(variables, vis[None, :, :, None], ir[None, :, :, None])[0, :, :, 0])
    assert out.shape == vis.shape
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)


def test_attention_row_blocks_with_a_clamped_last_block(monkeypatch):
  # Blocks of 100 pixels: 1 row at 40x56, 3 at 20x28 (the last of 7 blocks clamped to end at row 20, so it repeats
  # a row of the one before), 7 at 10x14 (2 blocks, the second clamped). Called unjitted, so the patch applies.
  monkeypatch.setattr(bucketed, '_ATTENTION_PIXELS', 100)
  model = ISFuse(features=8)
  variables = random_variables(model, seed=3)
  vis, ir = _pair((37, 53), seed=8)
  pad = lambda x: np.pad(x, ((0, 3), (0, 3)))[None, :, :, None]
  out = bucketed.forward(model, bucketed.fold_batchnorm(variables), pad(vis), pad(ir), np.array([[37, 53]], np.int32))
  expected = _unpadded(variables, vis[None, :, :, None], ir[None, :, :, None])
  np.testing.assert_allclose(np.asarray(out)[0, :37, :53, 0], np.asarray(expected)[0, :, :, 0], atol=1e-5, rtol=0)


def test_bucketed_without_cfi_equals_unpadded_network():
  model = ISFuse(features=8, use_cfi=False)
  variables = random_variables(model, seed=4)
  vis, ir = _pair((21, 30), seed=5)
  out = inference.BucketedFuser(model, variables, multiple=32).fuse(vis, ir)
  expected = model.apply(variables, vis[None, :, :, None], ir[None, :, :, None], train=False).fused[0, :, :, 0]
  np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)


def test_batchnorm_folding_is_the_eval_mode_affine_map():
  variables = random_variables(ISFuse(features=8), seed=6)
  folded = bucketed.fold_batchnorm(variables)
  conv = variables['params']['encoder_ir']['stage1']['block0']['conv']
  bn = variables['params']['encoder_ir']['stage1']['block0']['bn']
  stats = variables['batch_stats']['encoder_ir']['stage1']['block0']['bn']
  x = np.random.default_rng(7).random((1, 9, 9, 1), np.float32)
  unfolded = jax.lax.conv_general_dilated(x, conv['kernel'], (1, 1), 'SAME',
                                          dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + conv['bias']
  unfolded = (unfolded - stats['mean']) / np.sqrt(stats['var'] + 1e-5) * bn['scale'] + bn['bias']
  p = folded['encoder_ir']['stage1']['block0']
  refolded = jax.lax.conv_general_dilated(x, p['kernel'], (1, 1), 'SAME',
                                          dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + p['bias']
  np.testing.assert_allclose(refolded, unfolded, atol=1e-5)
  assert set(folded['cfi3']) >= {'q_v', 'gate', 'gate_out', 'refine'} and 'bn' not in folded['cfi3']['gate']


def test_bucket_shapes():
  assert bucketed.bucket_shape(211, 447, 64) == (256, 448)
  assert bucketed.bucket_shape(256, 256, 64) == (256, 256)
  with pytest.raises(ValueError, match='multiple of 4'):
    bucketed.bucket_shape(10, 10, 30)
  fuser = inference.BucketedFuser(ISFuse(features=8), random_variables(ISFuse(features=8)), multiple=32)
  with pytest.raises(ValueError, match='different buckets'):
    fuser.fuse_batch([_pair((20, 20), 0), _pair((40, 20), 1)])


@pytest.mark.parametrize('size', [(3, 3), (3, 40)])
def test_too_small_images_are_refused_with_the_minimum(size):
  model = ISFuse(features=8)
  variables = random_variables(model)
  vis, ir = _pair(size, 0)
  message = rf'{size[1]}x{size[0]} \(WxH\); ISFuse needs at least 4x4'
  with pytest.raises(bucketed.ImageTooSmallError, match=message):
    inference.BucketedFuser(model, variables).fuse(vis, ir)
  with pytest.raises(bucketed.ImageTooSmallError, match=message):
    inference.fuse_luma(model, variables, vis, ir)


def test_plan_keeps_tight_buckets_when_a_bucket_costs_nothing():
  sizes = [(211, 447), (238, 501), (480, 640), (480, 640)]
  assert bucketed.plan_buckets(sizes, 32, bucket_cost=0) == {
      (211, 447): (224, 448), (238, 501): (256, 512), (480, 640): (480, 640)}


def test_plan_merges_similar_sizes_and_covers_every_image():
  sizes = [(211, 447), (238, 501), (248, 534), (266, 536), (286, 512), (302, 560), (576, 768)]
  plan = bucketed.plan_buckets(sizes, 32, bucket_cost=250_000)
  assert len(set(plan.values())) < len({bucketed.bucket_shape(h, w, 32) for h, w in sizes})
  for (h, w), (bh, bw) in plan.items():
    assert bh >= h and bw >= w and bh % 32 == 0 and bw % 32 == 0
  # The large image is far from the others: padding them all to 576x768 would cost more than its own program.
  assert plan[(576, 768)] == (576, 768) and plan[(211, 447)] != (576, 768)
  # With programs very expensive, one bucket holds everything.
  assert set(bucketed.plan_buckets(sizes, 32, bucket_cost=1e12).values()) == {(576, 768)}


def test_planned_bucket_output_equals_unpadded_network():
  variables = random_variables(ISFuse(features=8), seed=8)
  pairs = [_pair((20, 12), 0), _pair((37, 53), 1)]
  fuser = inference.BucketedFuser(ISFuse(features=8), variables)
  fuser.plan([(20, 12), (37, 53)], bucket_cost=1e12)  # Both go into the 64x64 bucket.
  batched = fuser.fuse_batch(pairs)  # Planned into one bucket, so they batch together.
  for (vis, ir), out in zip(pairs, batched):
    expected = np.asarray(_unpadded(variables, vis[None, :, :, None], ir[None, :, :, None])[0, :, :, 0])
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(fuser.fuse(vis, ir), expected, atol=1e-5, rtol=0)
