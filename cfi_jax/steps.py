"""ISFuse's train step as pure functions: the clean batch and its interventions as one XLA program.

The release runs five separate train-mode forward passes per step (clean, complementary, random, VIS-dropped,
IR-dropped). Here the views are stacked on a leading axis and the whole step compiles to one program; each view is
still normalised with its own batch statistics. `view_batching` picks how the views run inside that program:
'vmap' vectorises `model.apply` over the view axis (bigger kernels, what accelerators want), 'loop' unrolls one call
per view. On CPU 'loop' is 1.6-1.8x faster (b4 x 256^2 and 128^2, benchmarks/cfi_train_step.py): one view's
activations fit the last-level cache where five views' do not; a flat [5B] batch is as slow as 'vmap'. 'auto' picks
'loop' on CPU and 'vmap' elsewhere. The two modes compute the same function.

BatchNorm running statistics. The release's five passes update each running statistic r sequentially with PyTorch
momentum m = 0.1: r <- (1-m) r + m s_k for k = 1..S, so r_S = (1-m)^S r + sum_k m (1-m)^(S-k) s_k. The vmapped
passes all start from the same state, so `merge_batch_stats` applies that reduction explicitly. PyTorch stores the
UNBIASED batch variance (x n/(n-1), n = elements per channel) in running_var, whereas flax's BatchNorm stores the
biased one; best.pth was trained with PyTorch, so the step uses PyTorch's convention (unbiased_var=True). This is
what makes running statistics of fine-tuned or from-scratch JAX models interchangeable with the release's.

The dropout views feed a constant (zero) image to one encoder. Its BatchNorm layers then see (almost) zero variance
and divide rounding-level differences by sqrt(eps) layer after layer, so those passes' outputs, gradients and
statistics are ill-conditioned: they depend on float32 summation order, here as in PyTorch. This is the release's
design, kept for fidelity; it is why the vmapped and sequential passes agree to ~1e-6 only on the other views.

`running_stats` picks which passes update the running statistics: 'all_views' (the release) or 'clean_view'. The
release's statistics mix the masked and zero-input views with the clean one, while evaluation only ever sees clean
pairs; 'clean_view' gives eval mode the statistics of the data it will meet. Training itself (train-mode outputs,
losses, gradients) is the same either way.
"""
from collections.abc import Mapping
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from cfi_jax import interventions
from cfi_jax import losses
from cfi_jax.model import FusionOutput, ISFuse

Batch = Mapping[str, jax.Array]
VIEW_BATCHING_MODES = ('auto', 'vmap', 'loop')
REMAT_MODES = ('none', 'views')
RUNNING_STATS_MODES = ('all_views', 'clean_view')


@flax.struct.dataclass
class TrainState:
  """Everything a training step updates; `tx` is static (not part of the pytree)."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


def make_optimizer(config: Mapping[str, Any] | None = None) -> optax.GradientTransformation:
  """Adam (the release: lr 1e-4, default betas, no weight decay, no schedule, no clipping).

  Reads `learning_rate`, `b1`, `b2`, `eps` and `clip_grad_norm` from `config` (a dict or ml_collections ConfigDict)
  when present. clip_grad_norm > 0 scales a step's gradients down to that global norm first. Why one may want it:
  in the modality-dropout views one encoder sees a constant zero image, so each of its BatchNorms divides a
  zero-variance batch by sqrt(eps) and its exact gradient is zero, but float32 rounding amplified ~316x per layer is
  not: at initialisation the first stages' biases get gradients ~1e7 (demo), and Adam's second moment then keeps
  them frozen for thousands of steps. Clipping keeps such a step from writing into the moments.
  """
  config = config or {}
  adam = optax.adam(learning_rate=config.get('learning_rate', 1e-4), b1=config.get('b1', 0.9),
                    b2=config.get('b2', 0.999), eps=config.get('eps', 1e-8))
  clip = config.get('clip_grad_norm', 0.0)
  return optax.chain(optax.clip_by_global_norm(clip), adam) if clip > 0 else adam


def create_train_state(key: jax.Array, model: ISFuse, tx: optax.GradientTransformation,
                       image_shape: tuple[int, ...] = (1, 64, 64, 1)) -> TrainState:
  """Initialises the model variables and the optimizer state (step 0)."""
  dummy = jnp.zeros(image_shape, jnp.float32)
  variables = jax.jit(lambda k: model.init(k, dummy, dummy, train=False))(key)
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables['batch_stats'],
                    opt_state=tx.init(params), tx=tx)


class BatchNormLayer(NamedTuple):
  """Static facts about one BatchNorm call: elements per channel in its batch statistics, and flax momentum."""
  count: int
  momentum: float


def batchnorm_layers(model: nn.Module, params: Any, batch_stats: Any, vis_shape: tuple[int, ...],
                     ir_shape: tuple[int, ...]) -> dict[tuple[str, ...], BatchNormLayer]:
  """{module path: BatchNormLayer} for one train-mode call of `model` on inputs of the given shapes.

  Found by tracing shapes only (no computation), intercepting every BatchNorm call.
  """
  layers = {}

  def record(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, nn.BatchNorm) and context.method_name == '__call__':
      x = args[0]
      axes = (module.axis,) if isinstance(module.axis, int) else tuple(module.axis)
      features = 1
      for a in axes:
        features *= x.shape[a]
      count = x.size // features
      if module.path in layers and layers[module.path].count != count:
        raise ValueError(f'BatchNorm {module.path} is called with different shapes; cannot merge its statistics')
      layers[module.path] = BatchNormLayer(count=count, momentum=float(module.momentum))
    return next_fun(*args, **kwargs)

  abstract = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
  with nn.intercept_methods(record):
    jax.eval_shape(
        lambda v, a, b: model.apply(v, a, b, train=True, mutable=['batch_stats']),
        abstract({'params': params, 'batch_stats': batch_stats}),
        jax.ShapeDtypeStruct(vis_shape, jnp.float32), jax.ShapeDtypeStruct(ir_shape, jnp.float32))
  return layers


def resolve_view_batching(mode: str, backend: str | None = None) -> str:
  """'vmap' or 'loop' for `mode` ('auto' resolves by `backend`, default the current JAX backend)."""
  if mode not in VIEW_BATCHING_MODES:
    raise ValueError(f'view_batching must be one of {VIEW_BATCHING_MODES}, got {mode!r}')
  if mode == 'auto':
    return 'loop' if (backend or jax.default_backend()) == 'cpu' else 'vmap'
  return mode


def apply_views(model: nn.Module, params: Any, batch_stats: Any, vis_views: jax.Array, ir_views: jax.Array,
                view_batching: str = 'auto', remat: str = 'none') -> tuple[FusionOutput, Any]:
  """Train-mode forward of every view over the leading view axis, vmapped or as a loop (see module docstring).

  remat='views' runs the views one after another and keeps none of their activations: the backward pass recomputes
  one view's forward at a time, so only one view's activations are alive, for about one extra forward pass.
  view_batching is then moot. The outputs, and so the coupled losses, are the same function of the parameters.

  Returns the stacked outputs and, per view, (1 - momentum) * its batch statistics (flax's biased variance): each
  view's pass starts from zero running statistics, so flax's update `momentum * 0 + (1 - momentum) * s` leaves
  exactly the scaled batch statistic. Train mode never reads the running statistics, so outputs are unaffected.
  """
  if remat not in REMAT_MODES:
    raise ValueError(f'remat must be one of {REMAT_MODES}, got {remat!r}')
  if remat == 'views':
    stats_shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch_stats)

    def view_of(params, vis, ir):
      # Zeros made from shapes, not from the traced statistics: a custom VJP may not close over traced values.
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), stats_shapes)
      out, mutated = model.apply({'params': params, 'batch_stats': zeros}, vis, ir, train=True,
                                 mutable=['batch_stats'])
      return out, mutated['batch_stats']

    return _one_view_at_a_time(view_of, params, vis_views, ir_views)

  zeros = jax.tree.map(jnp.zeros_like, batch_stats)

  def one_view(vis, ir):
    out, mutated = model.apply({'params': params, 'batch_stats': zeros}, vis, ir, train=True,
                               mutable=['batch_stats'])
    return out, mutated['batch_stats']

  if resolve_view_batching(view_batching) == 'vmap':
    return jax.vmap(one_view)(vis_views, ir_views)
  per_view = [one_view(vis_views[k], ir_views[k]) for k in range(vis_views.shape[0])]
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *per_view)


def _one_view_at_a_time(one_view, params: Any, vis_views: jax.Array, ir_views: jax.Array):
  """`one_view(params, vis, ir)` over the leading view axis, stacked, with only one view's activations alive.

  A custom VJP instead of jax.checkpoint: checkpointed views are independent, so XLA may (and on GPU does) run all
  five recomputations side by side and keep all their activations. Here optimization barriers chain the views:
  view k's inputs wait for view k-1's output going forward, and its recomputation waits for view k+1's gradient
  going back.
  """

  def chained_views(params, vis_views, ir_views):
    outputs, previous = [], None
    for k in range(vis_views.shape[0]):
      inputs = (params, vis_views[k], ir_views[k])
      if previous is not None:
        inputs, _ = jax.lax.optimization_barrier((inputs, previous))
      outputs.append(one_view(*inputs))
      previous = outputs[-1]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *outputs)

  @jax.custom_vjp
  def views(params, vis_views, ir_views):
    return chained_views(params, vis_views, ir_views)

  def forward(params, vis_views, ir_views):
    return chained_views(params, vis_views, ir_views), (params, vis_views, ir_views)

  def backward(residuals, cotangents):
    params, vis_views, ir_views = residuals
    grads = jax.tree.map(jnp.zeros_like, params)
    for k in reversed(range(vis_views.shape[0])):
      (view_params, vis, ir), grads = jax.lax.optimization_barrier(((params, vis_views[k], ir_views[k]), grads))
      _, vjp = jax.vjp(lambda p, vis=vis, ir=ir: one_view(p, vis, ir), view_params)
      grads = jax.tree.map(jnp.add, grads, vjp(jax.tree.map(lambda c, k=k: c[k], cotangents))[0])
    return grads, jnp.zeros_like(vis_views), jnp.zeros_like(ir_views)

  views.defvjp(forward, backward)
  return views(params, vis_views, ir_views)


def merge_batch_stats(batch_stats: Any, view_updates: Any, layers: Mapping[tuple[str, ...], BatchNormLayer],
                      *, unbiased_var: bool = True) -> Any:
  """Running statistics after the views' sequential train-mode passes, in view order.

  Args:
    batch_stats: running statistics before the step.
    view_updates: per view (stacked on axis 0), (1 - momentum) * the batch statistic (from `apply_views`).
    layers: `batchnorm_layers` of the model for one view's input shapes.
    unbiased_var: store PyTorch's unbiased variance (as the release does) rather than flax's biased one.

  Returns:
    r_S = mu^S r + sum_k mu^(S-k) u_k for every statistic (mu = flax momentum = 1 - PyTorch momentum,
    u_k = (1 - mu) s_k), with the variances' u_k scaled by n / (n - 1) when unbiased_var.
  """
  old = traverse_util.flatten_dict(batch_stats)
  updates = traverse_util.flatten_dict(view_updates)
  merged = {}
  for path, r in old.items():
    module_path, stat = path[:-1], path[-1]
    if module_path not in layers:
      raise ValueError(f'no BatchNorm call recorded for batch_stats entry {path}')
    layer = layers[module_path]
    u = updates[path]
    if stat == 'var' and unbiased_var:
      if layer.count < 2:
        raise ValueError(f'BatchNorm {module_path} sees {layer.count} element per channel; its unbiased variance '
                         f'is undefined (PyTorch raises too); use a larger batch or crop')
      u = u * (layer.count / (layer.count - 1))
    num_views = u.shape[0]
    decay = jnp.asarray([layer.momentum ** (num_views - 1 - k) for k in range(num_views)], u.dtype)
    merged[path] = layer.momentum ** num_views * r + jnp.tensordot(decay, u, axes=1)
  return traverse_util.unflatten_dict(merged)


def train_step(state: TrainState, batch: Batch, key: jax.Array, *, model: ISFuse, loss_config: losses.LossConfig,
               view_batching: str = 'auto', running_stats: str = 'all_views',
               remat: str = 'none') -> tuple[TrainState, dict[str, jax.Array]]:
  """One Adam step on L = L_f + alpha L_inv + beta L_nec over the clean batch and its interventions.

  Pure and jit-able (model, loss_config, view_batching and running_stats are static); with `batch` sharded over a
  'data' mesh axis, XLA computes the BatchNorm statistics and the loss as global means. `running_stats`: which
  passes update the BatchNorm running statistics, 'all_views' (the release) or 'clean_view' (module docstring).
  `remat`: 'none' or 'views' (recompute one view at a time in the backward pass; `apply_views`).
  Metrics: every loss term ('loss' is the total), the mean gate per scale of the clean pass ('gate_mean_3/4/5') and
  the global gradient norm ('grad_norm').
  """
  if running_stats not in RUNNING_STATS_MODES:
    raise ValueError(f'running_stats must be one of {RUNNING_STATS_MODES}, got {running_stats!r}')
  vis, ir = batch['vis'], batch['ir']
  vis_views, ir_views = interventions.build_views(
      key, vis, ir, complementary=loss_config.complementary, random=loss_config.random,
      dropout=loss_config.dropout, config=loss_config.holes)

  def loss_fn(params):
    outputs, bn_updates = apply_views(model, params, state.batch_stats, vis_views, ir_views, view_batching,
                                          remat)
    loss, terms = losses.total_loss(outputs.fused, outputs.gates, vis, ir, loss_config)
    return loss, (terms, outputs.gates, bn_updates)

  (_, (terms, gates, bn_updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  layers = batchnorm_layers(model, state.params, state.batch_stats, vis.shape, ir.shape)
  if running_stats == 'clean_view':
    bn_updates = jax.tree.map(lambda u: u[:1], bn_updates)  # build_views puts the clean view first
  opt_updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, opt_updates),
                            batch_stats=merge_batch_stats(state.batch_stats, bn_updates, layers),
                            opt_state=opt_state)
  metrics = dict(terms)
  for scale, g in zip((3, 4, 5), gates):
    metrics[f'gate_mean_{scale}'] = jnp.mean(g[0].astype(jnp.float32))
  metrics['grad_norm'] = optax.tree.norm(grads)
  return new_state, metrics

