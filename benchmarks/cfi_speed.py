"""ISFuse speed: JAX vs the PyTorch twin of the release, inference and the five-view training step.

  python benchmarks/cfi_speed.py --device=cpu [--out_json=cfi_speed.json] [--repeats=5]

Prints fused images per second (480x640 and 256x256), five-view training steps per second (batch 4 and 16 at 256²
by default; JAX with the views vmapped and looped, see cfi_jax/steps.py), the ratios JAX / PyTorch, FLOPs per image
(XLA's cost analysis and a layer count), the achieved FLOP rate as a fraction of a matrix-multiply peak measured on
the same machine, and peak memory. Never run with fake devices.
"""
import json
import os
import pathlib
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import timing  # pylint: disable=g-import-not-at-top
from cfi_jax import losses
from cfi_jax import model as model_lib
from cfi_jax import steps as cfi_steps

_DEVICE = flags.DEFINE_enum("device", "cpu", ["cpu", "gpu"], "Backend for both frameworks.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats after warm-up; the median is reported.")
_OUT_JSON = flags.DEFINE_string("out_json", None, "Write the results here as JSON.")
_SKIP_TORCH = flags.DEFINE_bool("skip_torch", False, "Time JAX only.")
_TRAIN_BATCHES = flags.DEFINE_list("train_batches", ["4", "16"], "Batch sizes of the 256² training step.")
_TRAIN_SIZE = flags.DEFINE_integer("train_size", 256, "Square crop size of the training step.")
_INFER_SIZES = flags.DEFINE_list("infer_sizes", ["480x640", "256x256"], "HxW of the inference images.")
_VIEW_BATCHING = flags.DEFINE_list("view_batching", ["vmap", "loop"], "JAX train-step view modes to time.")


def analytic_forward_flops(height: int, width: int, dim: int = 32, pool: int = 8) -> float:
  """Multiply-adds x2 of every conv and attention matmul of one forward pass (BN, activations ignored)."""
  conv = lambda h, w, k, cin, cout: 2.0 * h * w * k * k * cin * cout
  scales = [(height, width), (height // 2, width // 2), (height // 4, width // 4)]
  flops = 0.0
  for s, (h, w) in enumerate(scales):
    first_in = 1 if s == 0 else dim
    flops += 2 * (conv(h, w, 3, first_in, dim) + conv(h, w, 3, dim, dim))  # two encoders
    tokens = pool * pool
    flops += 2 * conv(h, w, 1, dim, dim)  # queries
    flops += 4 * conv(pool, pool, 1, dim, dim)  # keys and values on the pooled grid
    flops += 2 * 2 * (2.0 * h * w * tokens * dim)  # logits and weighted sum, both directions
    flops += conv(h, w, 3, dim, dim // 2) + conv(h, w, 1, dim // 2, 1)  # gate head
    flops += conv(h, w, 3, dim, dim)  # refine
    if s < 2:
      flops += 2 * conv(h, w, 3, dim, dim)  # adjust4 / adjust5
  flops += conv(height, width, 3, dim, 1)
  return flops


def time_jax_inference(device, height: int, width: int, variables, model, repeats: int) -> dict:
  rng = np.random.default_rng(0)
  vis = jax.device_put(rng.random((1, height, width, 1), np.float32), device)
  ir = jax.device_put(rng.random((1, height, width, 1), np.float32), device)
  variables = jax.device_put(variables, device)
  fuse = jax.jit(lambda v, a, b: model.apply(v, a, b, train=False).fused)
  compiled = fuse.lower(variables, vis, ir).compile()
  seconds = timing.median_seconds(lambda: compiled(variables, vis, ir).block_until_ready(), repeats)
  return {"seconds": seconds, "images_per_s": 1.0 / seconds, "xla_flops": timing.xla_flops(compiled)}


def time_jax_train_step(device, batch: int, size: int, repeats: int, view_batching: str) -> dict:
  model = model_lib.ISFuse()
  loss_config = losses.LossConfig()
  tx = cfi_steps.make_optimizer({"learning_rate": 1e-4})
  state = jax.device_put(
      cfi_steps.create_train_state(jax.random.key(0), model, tx, image_shape=(batch, size, size, 1)), device)
  rng = np.random.default_rng(0)
  data = {k: jax.device_put(rng.random((batch, size, size, 1), np.float32), device) for k in ("vis", "ir")}
  step = jax.jit(lambda s, b, k: cfi_steps.train_step(s, b, k, model=model, loss_config=loss_config,
                                                      view_batching=view_batching))
  key = jax.device_put(jax.random.key(1), device)
  compiled = step.lower(state, data, key).compile()

  def run():
    nonlocal state
    state, metrics = compiled(state, data, key)
    jax.block_until_ready(metrics)

  seconds = timing.median_seconds(run, repeats)
  return {"seconds": seconds, "steps_per_s": 1.0 / seconds, "xla_flops": timing.xla_flops(compiled)}


def time_torch(height: int, width: int, batch: int, train: bool, use_gpu: bool, repeats: int) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  import torch_isfuse  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(os.cpu_count())
  device = torch.device("cuda" if use_gpu else "cpu")
  torch.manual_seed(0)
  model = torch_isfuse.ISFuseTorch().to(device).to(memory_format=torch.channels_last)
  vis = torch.rand(batch, 1, height, width, device=device).contiguous(memory_format=torch.channels_last)
  ir = torch.rand(batch, 1, height, width, device=device).contiguous(memory_format=torch.channels_last)
  sync = torch.cuda.synchronize if use_gpu else (lambda: None)
  if train:
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)

    def run():
      loss = torch_isfuse.five_pass_loss(model, vis, ir, generator)
      optimizer.zero_grad()
      loss.backward()
      optimizer.step()
      sync()
  else:
    model.eval()

    def run():
      with torch.no_grad():
        model(vis, ir)
      sync()

  seconds = timing.median_seconds(run, repeats)
  if train:
    return {"seconds": seconds, "steps_per_s": 1.0 / seconds}
  return {"seconds": seconds, "images_per_s": batch / seconds}


def main(argv):
  del argv
  device = jax.devices(_DEVICE.value)[0]
  repeats = _REPEATS.value
  results = {"device": device.device_kind, "platform": device.platform, "cpu_count": os.cpu_count()}
  peak = timing.matmul_peak_flops(device)
  results["matmul_peak_flops"] = peak
  print(f"device: {device.device_kind} ({device.platform}); measured f32 matmul peak {peak / 1e9:.1f} GFLOP/s")

  model = model_lib.ISFuse()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 1)), jnp.zeros((1, 64, 64, 1)), train=False)
  for size in _INFER_SIZES.value:
    height, width = (int(v) for v in size.split("x"))
    row = time_jax_inference(device, height, width, variables, model, repeats)
    row["layer_count_flops"] = analytic_forward_flops(height, width)
    row["fraction_of_peak"] = row["xla_flops"] * row["images_per_s"] / peak
    if not _SKIP_TORCH.value:
      row["torch"] = time_torch(height, width, 1, False, device.platform == "gpu", repeats)
      row["speedup_vs_torch"] = row["images_per_s"] / row["torch"]["images_per_s"]
    results[f"inference_{size}"] = row
    print(f"inference {size}: JAX {row['images_per_s']:.2f} img/s"
          + (f", PyTorch {row['torch']['images_per_s']:.2f} img/s, ratio {row['speedup_vs_torch']:.2f}x"
             if "torch" in row else "")
          + f"; {row['xla_flops'] / 1e9:.2f} GFLOP/img (XLA), {row['layer_count_flops'] / 1e9:.2f} (layer count);"
          f" {100 * row['fraction_of_peak']:.1f}% of matmul peak")

  for batch in (int(b) for b in _TRAIN_BATCHES.value):
    size = _TRAIN_SIZE.value
    label = f"train_step_b{batch}_{size}"
    results[label] = {}
    torch_row = None
    if not _SKIP_TORCH.value:
      torch_row = results[label]["torch"] = time_torch(size, size, batch, True, device.platform == "gpu", repeats)
      print(f"five-view train step, batch {batch} x {size}²: PyTorch five passes {torch_row['seconds'] * 1e3:.0f} ms")
    for mode in _VIEW_BATCHING.value:
      try:
        row = time_jax_train_step(device, batch, size, repeats, mode)
      except jax.errors.JaxRuntimeError as e:
        if "RESOURCE_EXHAUSTED" not in str(e):
          raise
        # The five-view step keeps every view's activations for the backward pass (~40 GB at batch 16 x 256²).
        results[label][mode] = {"error": "out of memory"}
        print(f"five-view train step, batch {batch} x {size}², views {mode}: JAX out of memory")
        continue
      row["fraction_of_peak"] = row["xla_flops"] * row["steps_per_s"] / peak
      if torch_row:
        row["speedup_vs_torch"] = row["steps_per_s"] / torch_row["steps_per_s"]
      results[label][mode] = row
      print(f"five-view train step, batch {batch} x {size}², views {mode}: JAX {row['seconds'] * 1e3:.0f} ms"
            + (f", ratio vs PyTorch {row['speedup_vs_torch']:.2f}x" if torch_row else "")
            + f"; {row['xla_flops'] / 1e9:.1f} GFLOP/step (XLA), {100 * row['fraction_of_peak']:.1f}% of matmul peak")

  results["peak_memory_bytes"] = timing.peak_memory_bytes(device)
  print(f"peak memory: {results['peak_memory_bytes'] / 2**20:.0f} MiB")
  if _OUT_JSON.value:
    pathlib.Path(_OUT_JSON.value).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
  app.run(main)
