"""The CFI train step (views vmapped or looped): equal to the release's sequential passes, PyTorch running
statistics, training."""
import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import traverse_util
from jax.sharding import NamedSharding, PartitionSpec as P

from cfi_jax import interventions
from cfi_jax import losses
from cfi_jax import steps as cfi_steps
from cfi_jax import torch_import
from cfi_jax.model import ISFuse

SHAPE = (2, 32, 32, 1)
MODEL = ISFuse(features=8)


def _pattern_batch() -> dict[str, jnp.ndarray]:
  """Two deterministic smooth 32x32 scenes with edges, different in the two modalities."""
  yy, xx = np.mgrid[0:32, 0:32] / 31.0
  vis = np.stack([0.5 + 0.4 * np.sin(6 * xx) * np.cos(4 * yy), 0.3 + 0.5 * xx * yy])
  ir = np.stack([0.1 + 0.8 * (((xx - 0.5) ** 2 + (yy - 0.5) ** 2) < 0.1), 0.9 - 0.6 * yy])
  return {'vis': jnp.asarray(vis[..., None], jnp.float32), 'ir': jnp.asarray(ir[..., None], jnp.float32)}


def _random_running_stats(batch_stats, key):
  """Non-trivial starting running statistics, so the reduction's decay of the old value is tested too."""
  leaves, treedef = jax.tree.flatten(batch_stats)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(treedef, [jax.random.uniform(k, leaf.shape, minval=0.5, maxval=2.0)
                                      for k, leaf in zip(keys, leaves)])


_apply_views = jax.jit(cfi_steps.apply_views, static_argnums=(0, 5))


@functools.partial(jax.jit, static_argnums=0)
def _one_pass(model, variables, vis, ir):
  return model.apply(variables, vis, ir, train=True, mutable=['batch_stats'])


def _assert_trees_close(actual, desired, **tol):
  flat_a, flat_d = traverse_util.flatten_dict(actual), traverse_util.flatten_dict(desired)
  assert flat_a.keys() == flat_d.keys()
  for path in flat_d:
    np.testing.assert_allclose(flat_a[path], flat_d[path], err_msg='/'.join(path), **tol)


@pytest.mark.parametrize('view_batching', ['vmap', 'loop'])
def test_batched_views_equal_sequential_passes(view_batching):
  batch = _pattern_batch()
  variables = MODEL.init(jax.random.key(0), batch['vis'], batch['ir'], train=False)
  params, batch_stats = variables['params'], _random_running_stats(variables['batch_stats'], jax.random.key(1))
  vis_views, ir_views = interventions.build_views(jax.random.key(2), batch['vis'], batch['ir'])
  outputs, updates = _apply_views(MODEL, params, batch_stats, vis_views, ir_views, view_batching)

  stats = batch_stats
  for k, name in enumerate(interventions.view_names()):
    out, mutated = _one_pass(MODEL, {'params': params, 'batch_stats': stats}, vis_views[k], ir_views[k])
    stats = mutated['batch_stats']
    # A dropped modality feeds a constant image to its encoder: BatchNorm then divides rounding-level spatial
    # differences by sqrt(eps) layer after layer, so those views are ill-conditioned and any reordering of float32
    # sums (vmap batches the convolutions) moves them by a few 1e-6 (PyTorch's own passes are just as sensitive).
    atol = 1e-6 if name in ('clean', 'complementary', 'random') else 5e-5
    np.testing.assert_allclose(outputs.fused[k], out.fused, atol=atol, rtol=0, err_msg=name)
    for g_vmapped, g in zip(outputs.gates, out.gates):
      np.testing.assert_allclose(g_vmapped[k], g, atol=3 * atol, rtol=0, err_msg=name)

  layers = cfi_steps.batchnorm_layers(MODEL, params, batch_stats, SHAPE, SHAPE)
  assert layers[('encoder_vis', 'stage1', 'block0', 'bn')] == cfi_steps.BatchNormLayer(count=2 * 32 * 32, momentum=0.9)
  assert layers[('cfi3', 'gate', 'bn')].count == 2 * 8 * 8
  # flax's sequential updates keep the biased variance; with unbiased_var=False the reduction must equal them.
  merged = cfi_steps.merge_batch_stats(batch_stats, updates, layers, unbiased_var=False)
  _assert_trees_close(merged, stats, rtol=2e-5, atol=1e-6)


def test_merged_statistics_follow_pytorch_running_updates():
  """Against the PyTorch rule written out in numpy: r <- 0.9 r + 0.1 s, s = (mean, unbiased var)."""
  bn = nn.BatchNorm(use_running_average=False, momentum=0.9)
  data = np.random.default_rng(0).normal(size=(3, 4, 5, 5, 2)).astype(np.float32) * [1.0, 3.0] + [0.5, -2.0]
  start = {'mean': np.asarray([0.3, -0.1], np.float32), 'var': np.asarray([1.5, 0.7], np.float32)}

  params = bn.init(jax.random.key(0), data[0])['params']

  def update(x):
    zeros = jax.tree.map(jnp.zeros_like, start)
    return bn.apply({'params': params, 'batch_stats': zeros}, x, mutable=['batch_stats'])[1]

  updates = jax.vmap(update)(jnp.asarray(data))['batch_stats']
  layers = {(): cfi_steps.BatchNormLayer(count=4 * 5 * 5, momentum=0.9)}
  merged = cfi_steps.merge_batch_stats(start, updates, layers)
  mean, var = start['mean'].astype(np.float64), start['var'].astype(np.float64)
  for x in data:
    flat = x.reshape(-1, 2).astype(np.float64)
    mean = 0.9 * mean + 0.1 * flat.mean(axis=0)
    var = 0.9 * var + 0.1 * flat.var(axis=0, ddof=1)
  np.testing.assert_allclose(merged['mean'], mean, rtol=1e-5)
  np.testing.assert_allclose(merged['var'], var, rtol=1e-5)
  with pytest.raises(ValueError, match='unbiased variance'):
    cfi_steps.merge_batch_stats(start, updates, {(): cfi_steps.BatchNormLayer(count=1, momentum=0.9)})


def test_outputs_and_running_statistics_match_the_pytorch_twin(repo_root):
  """The release's sequential train-mode passes in PyTorch (unbiased running_var) leave the same statistics."""
  torch = pytest.importorskip('torch')
  spec = importlib.util.spec_from_file_location('torch_isfuse', repo_root / 'benchmarks' / 'torch_isfuse.py')
  twin = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(twin)
  torch.manual_seed(0)
  net = twin.ISFuseTorch(dim=8).train()
  for module in net.modules():
    if isinstance(module, torch.nn.BatchNorm2d):
      module.running_mean.uniform_(-1.0, 1.0)
      module.running_var.uniform_(0.5, 2.0)
  shapes = jax.eval_shape(lambda: MODEL.init(jax.random.key(0), jnp.zeros(SHAPE), jnp.zeros(SHAPE), train=False))
  to_numpy = lambda: {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
  variables, _ = torch_import.convert_state_dict(to_numpy(), shapes)

  batch = _pattern_batch()
  vis_views, ir_views = interventions.build_views(jax.random.key(3), batch['vis'], batch['ir'])
  outputs, updates = _apply_views(MODEL, variables['params'], variables['batch_stats'], vis_views, ir_views)
  # Only the well-conditioned views (see the test above): the dropped-modality passes amplify float32 rounding,
  # which differs between PyTorch and XLA.
  num_views = 3
  updates = jax.tree.map(lambda u: u[:num_views], updates)
  layers = cfi_steps.batchnorm_layers(MODEL, variables['params'], variables['batch_stats'], SHAPE, SHAPE)
  merged = cfi_steps.merge_batch_stats(variables['batch_stats'], updates, layers)

  nchw = lambda x: torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    for k in range(num_views):
      fused = net(nchw(vis_views[k]), nchw(ir_views[k]))[0]
      np.testing.assert_allclose(outputs.fused[k], fused.numpy().transpose(0, 2, 3, 1), atol=1e-5)
  reference, _ = torch_import.convert_state_dict(to_numpy(), shapes)
  _assert_trees_close(merged, reference['batch_stats'], rtol=1e-4, atol=1e-5)


def test_make_optimizer_is_adam_with_release_defaults():
  grads = {'w': jnp.asarray([2.0, -3.0])}
  tx = cfi_steps.make_optimizer()
  updates, _ = tx.update(grads, tx.init(grads))
  # Adam's first step moves every parameter by lr against the sign of its gradient.
  np.testing.assert_allclose(updates['w'], [-1e-4, 1e-4], rtol=1e-4)
  faster = cfi_steps.make_optimizer({'learning_rate': 1e-3})
  np.testing.assert_allclose(faster.update(grads, faster.init(grads))[0]['w'], [-1e-3, 1e-3], rtol=1e-4)


def _first_stage_bias_second_moments(clip_grad_norm: float) -> np.ndarray:
  """Adam's second moment of the encoders' first BatchNorm biases after the first step of the full loss."""
  tx = cfi_steps.make_optimizer({'learning_rate': 1e-3, 'clip_grad_norm': clip_grad_norm})
  state = cfi_steps.create_train_state(jax.random.key(0), MODEL, tx, SHAPE)
  state, _ = jax.jit(functools.partial(cfi_steps.train_step, model=MODEL, loss_config=losses.LossConfig()))(
      state, _pattern_batch(), jax.random.key(1))
  adam_state = state.opt_state[-1] if clip_grad_norm > 0 else state.opt_state
  nu = adam_state[0].nu
  return np.concatenate([np.asarray(nu[name]['stage1']['block0']['bn']['bias']) for name in ('encoder_ir',
                                                                                              'encoder_vis')])


def test_dropout_views_spike_the_first_gradient_and_clipping_keeps_it_out_of_adam():
  # A zero image makes every BatchNorm of its encoder divide a zero-variance batch by sqrt(eps): the exact gradient
  # of the first stages' biases is zero, the float32 one is rounding amplified ~316x per layer. Unclipped, Adam's
  # second moment stores it (then the update lr * m / sqrt(nu) of those biases is ~0 for thousands of steps).
  assert _first_stage_bias_second_moments(0.0).max() > 1e4
  assert _first_stage_bias_second_moments(1.0).max() < 1e-2


@pytest.fixture(scope='module')
def trained():
  """50 steps of the full CFI loss with the batch sharded over a 2-device 'data' mesh."""
  mesh = jax.make_mesh((2,), ('data',), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:2])
  data_sharding, replicated = NamedSharding(mesh, P('data')), NamedSharding(mesh, P())
  batch = jax.device_put(_pattern_batch(), data_sharding)
  tx = cfi_steps.make_optimizer({'learning_rate': 1e-3})
  state = cfi_steps.create_train_state(jax.random.key(0), MODEL, tx, SHAPE)
  initial = state = jax.device_put(state, replicated)
  step = jax.jit(functools.partial(cfi_steps.train_step, model=MODEL, loss_config=losses.LossConfig()),
                 out_shardings=(replicated, replicated))
  history = []
  for i in range(50):
    state, metrics = step(state, batch, jax.random.fold_in(jax.random.key(1), i))
    history.append(jax.device_get(metrics))
  return initial, state, history, batch


def test_train_step_reports_finite_metrics_and_updates_everything(trained):
  initial, state, history, _ = trained
  expected = {'loss', 'loss_f', 'loss_f_l1_vis', 'loss_f_l1_ir', 'loss_f_grad', 'loss_inv', 'loss_inv_consistency',
              'loss_inv_area', 'loss_inv_entropy', 'loss_nec', 'gate_mean_3', 'gate_mean_4', 'gate_mean_5',
              'grad_norm'}
  assert set(history[0]) == expected
  for metrics in history:
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    np.testing.assert_allclose(metrics['loss'], metrics['loss_f'] + 0.1 * metrics['loss_inv']
                               + 0.05 * metrics['loss_nec'], rtol=1e-5)
  assert int(state.step) == 50
  for old, new in ((initial.params, state.params), (initial.batch_stats, state.batch_stats)):
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), old, new)
    assert all(jax.tree.leaves(changed))
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state.params))


def test_training_decreases_the_loss(trained):
  _, _, history, _ = trained
  losses_seen = np.asarray([m['loss'] for m in history])
  assert losses_seen[-5:].mean() < 0.8 * losses_seen[:5].mean(), losses_seen


def test_trained_running_statistics_change_the_eval_mode_output(trained):
  initial, state, _, batch = trained
  fuse = jax.jit(lambda batch_stats: MODEL.apply({'params': state.params, 'batch_stats': batch_stats}, batch['vis'],
                                                 batch['ir'], train=False).fused)
  # Eval mode normalises with the running statistics, so the initial statistics give another image.
  assert np.abs(np.asarray(fuse(state.batch_stats)) - np.asarray(fuse(initial.batch_stats))).max() > 1e-3


def test_vmap_and_loop_steps_compute_the_same_update():
  """Same losses, gradients (plain SGD makes the update the gradient) and running statistics in both modes."""
  batch = _pattern_batch()
  state = cfi_steps.create_train_state(jax.random.key(0), MODEL, optax.sgd(1.0), SHAPE)
  new = {}
  for mode in ('vmap', 'loop'):
    step = jax.jit(functools.partial(cfi_steps.train_step, model=MODEL, loss_config=losses.LossConfig(),
                                     view_batching=mode))
    new[mode] = step(state, batch, jax.random.key(4))
  (vmapped, vmapped_metrics), (looped, looped_metrics) = new['vmap'], new['loop']
  for name in vmapped_metrics:
    np.testing.assert_allclose(looped_metrics[name], vmapped_metrics[name], rtol=1e-4, err_msg=name)
  # The dropped-modality views are ill-conditioned (see above), hence the loose tolerance on the gradient.
  grad = lambda s: optax.tree.sub(state.params, s.params)
  scale = optax.tree.norm(grad(vmapped))
  assert optax.tree.norm(optax.tree.sub(grad(looped), grad(vmapped))) < 1e-3 * scale
  _assert_trees_close(looped.batch_stats, vmapped.batch_stats, rtol=1e-4, atol=1e-5)


def test_clean_view_running_stats_come_from_the_clean_pass_only():
  """Same step as the release's except the running statistics: one momentum update with the clean batch's own
  statistics (flax's BatchNorm update on the clean pass, with PyTorch's unbiased variance)."""
  batch = _pattern_batch()
  state = cfi_steps.create_train_state(jax.random.key(0), MODEL, optax.sgd(1.0), SHAPE)
  state = state.replace(batch_stats=_random_running_stats(state.batch_stats, jax.random.key(5)))
  steps = {mode: jax.jit(functools.partial(cfi_steps.train_step, model=MODEL, loss_config=losses.LossConfig(),
                                           view_batching='loop', running_stats=mode))(state, batch, jax.random.key(4))
           for mode in cfi_steps.RUNNING_STATS_MODES}
  (release, release_metrics), (clean, clean_metrics) = steps['all_views'], steps['clean_view']
  for name in release_metrics:
    np.testing.assert_allclose(clean_metrics[name], release_metrics[name], rtol=1e-6, err_msg=name)
  _assert_trees_close(clean.params, release.params, rtol=1e-6, atol=1e-7)

  _, flax_update = _one_pass(MODEL, {'params': state.params, 'batch_stats': state.batch_stats}, batch['vis'],
                             batch['ir'])
  layers = cfi_steps.batchnorm_layers(MODEL, state.params, state.batch_stats, SHAPE, SHAPE)
  old, flax_new = traverse_util.flatten_dict(state.batch_stats), traverse_util.flatten_dict(flax_update['batch_stats'])
  got, release_stats = traverse_util.flatten_dict(clean.batch_stats), traverse_util.flatten_dict(release.batch_stats)
  for path, r in old.items():
    layer = layers[path[:-1]]
    expected = flax_new[path]
    if path[-1] == 'var':
      expected = layer.momentum * r + (expected - layer.momentum * r) * layer.count / (layer.count - 1)
    np.testing.assert_allclose(got[path], expected, rtol=1e-4, atol=1e-5, err_msg='/'.join(path))
  assert any(np.abs(got[p] - release_stats[p]).max() > 1e-3 for p in got)
  with pytest.raises(ValueError, match='running_stats'):
    cfi_steps.train_step(state, batch, jax.random.key(4), model=MODEL, loss_config=losses.LossConfig(),
                     running_stats='clean')


def test_resolve_view_batching():
  assert cfi_steps.resolve_view_batching('auto', 'cpu') == 'loop'
  assert cfi_steps.resolve_view_batching('auto', 'gpu') == 'vmap'
  assert cfi_steps.resolve_view_batching('auto', 'tpu') == 'vmap'
  assert cfi_steps.resolve_view_batching('vmap', 'cpu') == 'vmap'
  with pytest.raises(ValueError, match='view_batching'):
    cfi_steps.resolve_view_batching('sequential')
