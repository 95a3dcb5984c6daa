"""Per-HLO-op wall time of a jitted function from a JAX profiler trace (Perfetto JSON, no extra packages), and the
HLO text's ops (kind, shape, flax module path) to group it by; shared by the profiling benchmarks."""
import collections
import gzip
import json
import math
import pathlib
import re
import tempfile
import time

import jax

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
