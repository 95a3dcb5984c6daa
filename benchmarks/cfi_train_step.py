"""Times the vmapped five-view CFI train step against a sequential five-pass step (same batch, same device).

  python benchmarks/cfi_train_step.py [--batch=4] [--sizes=128,256] [--features=32] [--repeats=5]

The sequential step is the release's structure written in JAX: five train-mode `model.apply` calls one after the
other, each threading the BatchNorm running statistics into the next, then the same loss and Adam update. Both
steps are jitted whole; they differ only in vmapping the network over the view axis versus five separate calls.
Prints the median seconds per step over `repeats` timed runs (the two steps alternate) after one warm-up
(compile) run each. Never run this with fake devices (tests/conftest.py sets them; this script does not).
"""
import functools
import pathlib
import statistics
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import optax
import tqdm

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from cfi_jax import interventions  # pylint: disable=g-import-not-at-top
from cfi_jax import losses
from cfi_jax import model as model_lib
from cfi_jax import train

_BATCH = flags.DEFINE_integer('batch', 4, 'Images per batch.')
_SIZES = flags.DEFINE_list('sizes', ['128', '256'], 'Square crop sizes to time.')
_FEATURES = flags.DEFINE_integer('features', 32, 'ISFuse width (the release uses 32).')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed steps after warm-up; the median is reported.')


def sequential_train_step(state: train.TrainState, batch: dict, key: jax.Array, *, model: model_lib.ISFuse,
                          loss_config: losses.LossConfig) -> tuple[train.TrainState, dict]:
  """The release's five separate train-mode passes, running statistics threaded through them in view order."""
  vis, ir = batch['vis'], batch['ir']
  vis_views, ir_views = interventions.build_views(
      key, vis, ir, complementary=loss_config.complementary, random=loss_config.random,
      dropout=loss_config.dropout, config=loss_config.holes)

  def loss_fn(params):
    stats, outputs = state.batch_stats, []
    for k in range(vis_views.shape[0]):
      out, mutated = model.apply({'params': params, 'batch_stats': stats}, vis_views[k], ir_views[k], train=True,
                                 mutable=['batch_stats'])
      stats = mutated['batch_stats']
      outputs.append(out)
    fused = jnp.stack([o.fused for o in outputs])
    gates = [jnp.stack([o.gates[s] for o in outputs]) for s in range(3)]
    loss, terms = losses.total_loss(fused, gates, vis, ir, loss_config)
    return loss, (terms, stats)

  (_, (terms, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                            batch_stats=stats, opt_state=opt_state)
  return new_state, terms


def median_step_seconds(steps: dict, state, batch, repeats: int, desc: str) -> dict[str, float]:
  """Median wall time of each step function over `repeats` runs after one warm-up (compile) run each.

  The functions take turns within every repeat, so a change in machine load affects them alike.
  """
  key = jax.random.key(1)
  for step in steps.values():
    jax.block_until_ready(step(state, batch, key))
  times = {label: [] for label in steps}
  for i in tqdm.tqdm(range(repeats), desc=desc, unit='repeat'):
    for label, step in steps.items():
      start = time.perf_counter()
      jax.block_until_ready(step(state, batch, jax.random.fold_in(key, i)))
      times[label].append(time.perf_counter() - start)
  return {label: statistics.median(t) for label, t in times.items()}


def main(argv):
  del argv
  model = model_lib.ISFuse(features=_FEATURES.value)
  loss_config = losses.LossConfig()
  tx = train.make_optimizer()
  print(f'device: {jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()}), '
        f'features={_FEATURES.value}, batch={_BATCH.value}, views={len(loss_config.view_names)}')
  for size in (int(s) for s in _SIZES.value):
    shape = (_BATCH.value, size, size, 1)
    state = train.create_train_state(jax.random.key(0), model, tx, image_shape=shape)
    keys = jax.random.split(jax.random.key(2))
    batch = {'vis': jax.random.uniform(keys[0], shape), 'ir': jax.random.uniform(keys[1], shape)}
    steps = {label: jax.jit(functools.partial(fn, model=model, loss_config=loss_config))
             for label, fn in (('vmapped', train.train_step), ('sequential', sequential_train_step))}
    seconds = median_step_seconds(steps, state, batch, _REPEATS.value, f'{size}x{size}')
    print(f'{size}x{size}: vmapped {seconds["vmapped"] * 1e3:.0f} ms/step, sequential '
          f'{seconds["sequential"] * 1e3:.0f} ms/step, sequential / vmapped = '
          f'{seconds["sequential"] / seconds["vmapped"]:.2f}')


if __name__ == '__main__':
  app.run(main)
