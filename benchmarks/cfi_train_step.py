"""Times the five-view CFI train step with the views vmapped against looped (same batch, same device).

  python benchmarks/cfi_train_step.py [--batch=4] [--sizes=128,256] [--features=32] [--repeats=5]

Both are `cfi_jax.steps.train_step` jitted whole; they differ only in `view_batching`: one vmapped `model.apply`
over the view axis versus five unrolled calls (the release's five passes). The measurement behind the 'auto'
choice. Prints the median seconds per step over `repeats` timed runs (the two steps alternate) after one warm-up
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
import tqdm

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from cfi_jax import losses  # pylint: disable=g-import-not-at-top
from cfi_jax import model as model_lib
from cfi_jax import steps as cfi_steps

_BATCH = flags.DEFINE_integer('batch', 4, 'Images per batch.')
_SIZES = flags.DEFINE_list('sizes', ['128', '256'], 'Square crop sizes to time.')
_FEATURES = flags.DEFINE_integer('features', 32, 'ISFuse width (the release uses 32).')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed steps after warm-up; the median is reported.')


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
  tx = cfi_steps.make_optimizer()
  print(f'device: {jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()}), '
        f'features={_FEATURES.value}, batch={_BATCH.value}, views={len(loss_config.view_names)}')
  for size in (int(s) for s in _SIZES.value):
    shape = (_BATCH.value, size, size, 1)
    state = cfi_steps.create_train_state(jax.random.key(0), model, tx, image_shape=shape)
    keys = jax.random.split(jax.random.key(2))
    batch = {'vis': jax.random.uniform(keys[0], shape), 'ir': jax.random.uniform(keys[1], shape)}
    steps = {mode: jax.jit(functools.partial(cfi_steps.train_step, model=model, loss_config=loss_config,
                                             view_batching=mode))
             for mode in ('vmap', 'loop')}
    seconds = median_step_seconds(steps, state, batch, _REPEATS.value, f'{size}x{size}')
    print(f'{size}x{size}: vmap {seconds["vmap"] * 1e3:.0f} ms/step, loop {seconds["loop"] * 1e3:.0f} ms/step, '
          f'vmap / loop = {seconds["vmap"] / seconds["loop"]:.2f}')


if __name__ == '__main__':
  app.run(main)
