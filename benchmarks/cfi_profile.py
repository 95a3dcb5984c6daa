"""Where an ISFuse step spends its time: per-HLO-op wall time from a JAX profiler trace, grouped by layer.

  python benchmarks/cfi_profile.py --mode=inference --height=480 --width=640 [--top=15]   (or --mode=bucketed)
  python benchmarks/cfi_profile.py --mode=train --batch=4 --height=256 --width=256 [--view_batching=loop]

Runs the jitted function `repeats` times under `jax.profiler.trace` (Perfetto JSON, no extra packages), sums the
duration of every executed HLO op, and prints time per op kind and per top-level module (encoders, CFIs, decoder
layers), then the heaviest ops with the layer they come from (flax module path), their kind, and for convolutions
the achieved GFLOP/s (2 x output elements x kernel taps x input channels). XLA:CPU may run independent ops
concurrently, so per-op times can sum to more than the wall time; the shares are of the summed op time. Never run
with fake devices.
"""
import collections
import functools
import math
import pathlib
import sys

from absl import app
from absl import flags
import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from cfi_jax import bucketed  # pylint: disable=g-import-not-at-top
from cfi_jax import losses
from cfi_jax import model as model_lib
from cfi_jax import steps as cfi_steps
from hlo_profile import conv_flops
from hlo_profile import layer_of
from hlo_profile import parse_hlo
from hlo_profile import traced_op_seconds

_MODE = flags.DEFINE_enum("mode", "inference", ["inference", "bucketed", "train"],
                          "What to profile: model.apply, the padded folder-fusion forward (cfi_jax/bucketed.py), "
                          "or a train step.")
_HEIGHT = flags.DEFINE_integer("height", 480, "Image height.")
_WIDTH = flags.DEFINE_integer("width", 640, "Image width.")
_BATCH = flags.DEFINE_integer("batch", 1, "Images per batch.")
_VIEW_BATCHING = flags.DEFINE_enum("view_batching", "auto", list(cfi_steps.VIEW_BATCHING_MODES),
                                   "Train mode: how the five views run.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Traced runs after one warm-up run.")
_TOP = flags.DEFINE_integer("top", 15, "Heaviest ops to list.")


def build(mode: str, batch: int, height: int, width: int, view_batching: str):
  """(jitted function, its arguments) for one inference call or one five-view train step."""
  model = model_lib.ISFuse()
  rng = np.random.default_rng(0)
  vis, ir = (rng.random((batch, height, width, 1), np.float32) for _ in range(2))
  if mode == "inference":
    variables = model.init(jax.random.key(0), vis[:1, :64, :64], ir[:1, :64, :64], train=False)
    return jax.jit(lambda v, a, b: model.apply(v, a, b, train=False).fused), (variables, vis, ir)
  if mode == "bucketed":
    variables = model.init(jax.random.key(0), vis[:1, :64, :64], ir[:1, :64, :64], train=False)
    sizes = np.full((batch, 2), (height, width), np.int32)
    return (jax.jit(functools.partial(bucketed.forward, model)),
            (bucketed.fold_batchnorm(variables), vis, ir, sizes))
  state = cfi_steps.create_train_state(jax.random.key(0), model, cfi_steps.make_optimizer(),
                                       image_shape=(1, height, width, 1))
  step = jax.jit(functools.partial(cfi_steps.train_step, model=model, loss_config=losses.LossConfig(),
                                   view_batching=view_batching))
  return step, (state, {"vis": vis, "ir": ir}, jax.random.key(1))


def main(argv):
  del argv
  fn, args = build(_MODE.value, _BATCH.value, _HEIGHT.value, _WIDTH.value, _VIEW_BATCHING.value)
  ops = parse_hlo(fn.lower(*args).compile().as_text())
  seconds, wall = traced_op_seconds(fn, args, _REPEATS.value)
  total = sum(seconds.values())
  device = jax.devices()[0]
  print(f"{_MODE.value} batch {_BATCH.value} x {_HEIGHT.value}x{_WIDTH.value} on {device.device_kind} "
        f"({device.platform}): wall {wall * 1e3:.1f} ms/run, summed op time {total * 1e3:.1f} ms/run, "
        f"{len(seconds)} ops")

  by_kind = collections.Counter()
  for name, s in seconds.items():
    by_kind[ops.get(name, {}).get("kind", name.split(".")[0])] += s
  print("\ntime by op kind:")
  for kind, s in by_kind.most_common():
    print(f"  {kind:<24} {s * 1e3:9.1f} ms  {100 * s / total:5.1f}%")

  by_module = collections.Counter()
  for name, s in seconds.items():
    layer = layer_of(ops.get(name, {}).get("source", ""))
    by_module[next((part for part in layer.split("/") if part not in ("", "ISFuse")), "(unattributed)")] += s
  print("\ntime by top-level module:")
  for module, s in by_module.most_common():
    print(f"  {module:<24} {s * 1e3:9.1f} ms  {100 * s / total:5.1f}%")

  print(f"\nheaviest {_TOP.value} ops:")
  print(f"  {'ms':>8} {'%':>5} {'GFLOP/s':>8}  {'op':<28} {'shape':<20} layer")
  for name, s in sorted(seconds.items(), key=lambda kv: -kv[1])[:_TOP.value]:
    op = ops.get(name, {"kind": "?", "shape": (), "source": ""})
    rate = conv_flops(op, ops) / s / 1e9 if op["kind"] == "convolution" else float("nan")
    rate_text = f"{rate:8.1f}" if not math.isnan(rate) else " " * 8
    print(f"  {s * 1e3:8.2f} {100 * s / total:5.1f} {rate_text}  {name:<28} {str(list(op['shape'])):<20} "
          f"{layer_of(op['source'])}")


if __name__ == "__main__":
  app.run(main)
