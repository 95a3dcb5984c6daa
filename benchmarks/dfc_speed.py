"""DFC-Net speed: one generator + discriminator step of the `paper` config at 128², on one device.

  python benchmarks/dfc_speed.py --device=cpu [--batch=16] [--size=128] [--out_json=dfc_speed.json]

Times exactly what `launch.train` runs (the task's train step on a real puppet batch, paired + support) and prints
the median step time, FLOPs per step from XLA's cost analysis, the achieved FLOP rate as a fraction of a matmul peak
measured on the same device, and peak memory. Never run with fake devices.
"""
import json
import pathlib
import sys

from absl import app
from absl import flags
import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import timing  # pylint: disable=g-import-not-at-top
from launch.configs import dfc as dfc_configs
from launch.tasks import dfc as dfc_task

_DEVICE = flags.DEFINE_enum("device", "cpu", ["cpu", "gpu"], "Backend.")
_BATCH = flags.DEFINE_integer("batch", 16, "Paired batch size (the support batch has the same size).")
_SIZE = flags.DEFINE_integer("size", 128, "Image size.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats after warm-up; the median is reported.")
_OUT_JSON = flags.DEFINE_string("out_json", None, "Write the results here as JSON.")


def main(argv):
  del argv
  device = jax.devices(_DEVICE.value)[0]
  config = dfc_configs.get_config("paper")
  config.batch_size = _BATCH.value
  config.data.image_size = _SIZE.value
  config.data.workers = 0
  config.data.render_cache = False  # one batch: rendering it beats building the whole train split's cache
  task = dfc_task.make_task(config)
  batch = next(iter(task.train_dataset(seed=0, process_index=0, process_count=1)))
  batch = jax.device_put(batch, device)
  state = jax.device_put(task.init_state(jax.random.key(0), batch), device)
  key = jax.device_put(jax.random.key(1), device)
  compiled = jax.jit(task.train_step).lower(state, batch, key).compile()

  def run():
    nonlocal state
    state, metrics = compiled(state, batch, key)
    jax.block_until_ready(metrics)

  seconds = timing.median_seconds(run, _REPEATS.value)
  flops = timing.xla_flops(compiled)
  peak = timing.matmul_peak_flops(device)
  results = {
      "device": device.device_kind, "platform": device.platform, "batch": _BATCH.value, "size": _SIZE.value,
      "batch_shapes": {k: list(np.shape(v)) for k, v in batch.items()}, "seconds_per_step": seconds,
      "xla_flops_per_step": flops, "matmul_peak_flops": peak, "fraction_of_peak": flops / seconds / peak,
      "peak_memory_bytes": timing.peak_memory_bytes(device),
  }
  print(f"device: {device.device_kind} ({device.platform}); matmul peak {peak / 1e9:.1f} GFLOP/s")
  print(f"DFC-Net G+D step, batch {_BATCH.value} paired + support at {_SIZE.value}²: {seconds * 1e3:.0f} ms;"
        f" {flops / 1e9:.1f} GFLOP/step (XLA); {100 * results['fraction_of_peak']:.1f}% of matmul peak;"
        f" peak memory {results['peak_memory_bytes'] / 2**20:.0f} MiB")
  if _OUT_JSON.value:
    pathlib.Path(_OUT_JSON.value).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
  app.run(main)
