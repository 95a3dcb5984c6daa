"""How long a DFC-Net config's training takes on this machine, predicted from its phases' step times.

  taskset -c 0 python benchmarks/dfc_demo_time.py [--config=launch/configs/dfc.py:demo] [--config.FIELD=VALUE ...]
      [--repeats=5] [--profile] [--out_json=dfc_demo_time.json]

The demo's 4000 steps took 47-49 minutes on one core of README's machine; this answers "how long here" in about two
minutes instead. For each training phase (the pose pretraining, then the whole model) it compiles exactly the step
`launch.train` runs, on a real batch, and prints its median time, XLA's FLOPs per step and the achieved rate as a
fraction of a matmul peak measured on the same device; then the phases' steps times those times. Pin it to one core
as training is pinned (the other core as busy as it will be), never with fake devices; the prediction leaves out
data loading (overlapped with the steps), evaluations and checkpoints. XLA:CPU runs as in launch.train
(launch/xla_cpu.py; LAUNCH_XLA_CPU_DEFAULTS=0 measures without that setting).

--profile adds, per phase, where the step's time goes (hlo_profile: a profiler trace's per-HLO-op times): by the
first flax module or method under DFCNet (DFCNet.encode_pose, DFCNet.decode, VGG16Features, ...; '(top level)' for the
losses' arithmetic and the convolutions' weight gradients, which XLA leaves unnamed) and direction (forward, or
backward for ops under a transpose), and by op kind.
"""
import collections
import json
import pathlib
import re
import sys

from absl import app
from absl import flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from launch import xla_cpu  # pylint: disable=g-import-not-at-top

xla_cpu.set_xla_flags()  # XLA:CPU as launch.train sets it, before jax starts XLA.

import jax  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from hlo_profile import parse_hlo  # noqa: E402
from hlo_profile import traced_op_seconds  # noqa: E402
import timing  # noqa: E402
from launch.tasks import dfc as dfc_task  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(pathlib.Path(__file__).resolve().parents[1] / "launch/configs/dfc.py") + ":demo",
    "A DFC-Net config, as for launch.train.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats per phase after warm-up; the median is reported.")
_PROFILE = flags.DEFINE_bool("profile", False, "Also print where each phase's step spends its time.")
_TOP = flags.DEFINE_integer("top", 12, "Module rows to print per phase with --profile.")
_OUT_JSON = flags.DEFINE_string("out_json", None, "Write the results here as JSON.")


def phase_ranges(first_steps: list[int], num_steps: int) -> list[int]:
  """Steps in each phase, from the phases' first steps (task.train_phases) and the run's total."""
  bounds = [*first_steps, num_steps]
  return [max(0, min(end, num_steps) - start) for start, end in zip(bounds, bounds[1:])]


def module_of(source: str) -> str:
  """The first flax module (below DFCNet) or loss function an op comes from: its op_name's path without the jit
  prefix, transform wrappers (`transpose(jvp(M))` is M) and the op itself."""
  parts = [re.sub(r"^(?:\w+\()+([^()]*)\)*$", r"\1", p) for p in source.split("/")[1:-1]]
  parts = [p for p in parts if p and p != "DFCNet"]
  return parts[0] if parts else "(top level)"


def print_profile(compiled, args, repeats: int, top: int) -> None:
  """Summed per-op time of compiled(*args) by (module, direction) and by op kind (hlo_profile)."""
  ops = parse_hlo(compiled.as_text())
  seconds, _ = traced_op_seconds(compiled, args, repeats)
  total = sum(seconds.values())
  by_module, by_kind = collections.Counter(), collections.Counter()
  for name, s in seconds.items():
    op = ops.get(name, {"kind": name.split(".")[0], "source": ""})
    direction = "backward" if "transpose(" in op["source"] else "forward"
    by_module[(module_of(op["source"]), direction)] += s
    by_kind[op["kind"]] += s
  print(f"  summed op time {total * 1e3:.0f} ms; by module and direction:")
  for (module, direction), s in by_module.most_common(top):
    print(f"    {module:<28} {direction:<9} {s * 1e3:8.1f} ms {100 * s / total:5.1f}%")
  print("  by op kind: " + ", ".join(f"{kind} {100 * s / total:.0f}%" for kind, s in by_kind.most_common(6)))


def main(argv):
  del argv
  config = _CONFIG.value
  config.data.workers = 0
  device = jax.devices("cpu")[0]
  task = dfc_task.make_task(config)
  batch = next(iter(task.train_dataset(seed=0, process_index=0, process_count=1)))
  state = task.init_state(jax.random.key(0), batch)
  key = jax.random.key(1)
  phases = task.train_phases()
  steps = phase_ranges([first for first, _ in phases], config.num_steps)
  peak = timing.matmul_peak_flops(device)
  results = {"device": device.device_kind, "matmul_peak_flops": peak, "phases": []}
  print(f"device: {device.device_kind}; matmul peak {peak / 1e9:.1f} GFLOP/s")
  for (first, step_fn), num in zip(phases, steps):
    compiled = jax.jit(step_fn).lower(state, batch, key).compile()
    seconds = timing.median_seconds(lambda: jax.block_until_ready(compiled(state, batch, key)), _REPEATS.value)
    flops = timing.xla_flops(compiled)
    results["phases"].append({"first_step": first, "steps": num, "seconds_per_step": seconds,
                              "xla_flops_per_step": flops})
    print(f"phase from step {first}: {num} steps x {seconds:.3f} s = {num * seconds / 60:.1f} min;"
          f" {flops / 1e9:.1f} GFLOP/step (XLA), {100 * flops / seconds / peak:.0f}% of matmul peak")
    if _PROFILE.value:
      print_profile(compiled, (state, batch, key), _REPEATS.value, _TOP.value)
  total = sum(p["steps"] * p["seconds_per_step"] for p in results["phases"])
  results["predicted_seconds"] = total
  print(f"predicted training time: {total / 60:.1f} min for {config.num_steps} steps (steps only: no data loading,"
        " evaluations or checkpoints)")
  if _OUT_JSON.value:
    pathlib.Path(_OUT_JSON.value).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
  app.run(main)
