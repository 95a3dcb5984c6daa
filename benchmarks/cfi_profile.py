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
import gzip
import json
import math
import pathlib
import re
import sys
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from cfi_jax import bucketed  # pylint: disable=g-import-not-at-top
from cfi_jax import losses
from cfi_jax import model as model_lib
from cfi_jax import steps as cfi_steps

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

# `%name = f32[1,64,64,8]{...} convolution(%a, %b), ..., op_name="jit(f)/ISFuse/adjust5/block0/conv/..."`.
_HLO_LINE = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = (\w+)\[([\d,]*)\][^ ]* ([\w\-]+)\((.*)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def parse_hlo(text: str) -> dict[str, dict]:
  """{op name: {kind, shape, operands, source}} for every instruction of an HLO module's text."""
  ops = {}
  for line in text.splitlines():
    match = _HLO_LINE.match(line)
    if not match:
      continue
    name, _, dims, kind, rest = match.groups()
    source = _OP_NAME.search(line)
    window = re.search(r"window=\{size=([\dx]+)", line)
    labels = re.search(r"dim_labels=(\w+)_", line)
    ops[name] = {
        "kind": kind,
        "shape": tuple(int(d) for d in dims.split(",") if d),
        "operands": re.findall(r"%([\w.\-]+)", rest.split(")")[0]),
        "source": source.group(1) if source else "",
        "window": tuple(int(d) for d in window.group(1).split("x")) if window else (),
        "lhs_labels": labels.group(1) if labels else "",
    }
  return ops


def conv_flops(op: dict, ops: dict[str, dict]) -> float:
  """2 x output elements x window elements x the lhs feature dimension ('f' in dim_labels).

  Covers forward convs and both backward ones (for a weight gradient XLA's window spans the image and 'f' is the
  batch, so this is 2 x kernel size x H x W x N).
  """
  lhs = ops.get(op["operands"][0]) if op["operands"] else None
  if lhs is None or "f" not in op["lhs_labels"] or len(lhs["shape"]) != len(op["lhs_labels"]):
    return float("nan")
  return 2.0 * math.prod(op["shape"]) * math.prod(op["window"]) * lhs["shape"][op["lhs_labels"].index("f")]


def layer_of(source: str) -> str:
  """The flax module path of an op ('ISFuse/adjust5/block0/conv'), without jit/transform prefixes."""
  parts = [p for p in source.split("/") if p and not p.startswith(("jit(", "jvp(", "transpose(", "vmap("))]
  return "/".join(parts[:-1]) if len(parts) > 1 else source


def traced_op_seconds(fn, args, repeats: int) -> tuple[dict[str, float], float]:
  """({HLO op name: seconds per run}, wall seconds per run) of `fn(*args)` under the profiler."""
  jax.block_until_ready(fn(*args))
  with tempfile.TemporaryDirectory() as log_dir:
    start = time.perf_counter()
    with jax.profiler.trace(log_dir, create_perfetto_trace=True):
      for _ in range(repeats):
        jax.block_until_ready(fn(*args))
    wall = (time.perf_counter() - start) / repeats
    trace_file = next(pathlib.Path(log_dir).rglob("perfetto_trace.json.gz"))
    events = json.load(gzip.open(trace_file))
  events = events["traceEvents"] if isinstance(events, dict) else events
  totals = collections.Counter()
  for event in events:
    if event.get("ph") == "X" and "hlo_op" in event.get("args", {}):
      totals[event["args"]["hlo_op"]] += event.get("dur", 0.0) * 1e-6 / repeats
  return dict(totals), wall


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
