"""Timing and cost helpers shared by the speed benchmarks (no flags, importable from any script)."""
import resource
import statistics
import time

import jax
import jax.numpy as jnp


def median_seconds(fn, repeats: int) -> float:
  fn()  # Warm-up (compilation, allocator, caches).
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def matmul_peak_flops(device) -> float:
  n = 2048 if device.platform == "cpu" else 8192
  a = jax.device_put(jnp.ones((n, n), jnp.float32), device)
  matmul = jax.jit(lambda x: x @ x)
  seconds = median_seconds(lambda: matmul(a).block_until_ready(), 5)
  return 2.0 * n**3 / seconds


def xla_flops(compiled) -> float:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, list):
    analysis = analysis[0]
  return float(analysis.get("flops", float("nan")))


def peak_memory_bytes(device) -> float:
  if device.platform == "cpu":
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0  # Whole process, both frameworks.
  stats = device.memory_stats() or {}
  return float(stats.get("peak_bytes_in_use", float("nan")))
