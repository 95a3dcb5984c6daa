r"""Batches per second of a task's training pipeline alone, next to the accelerator step rates it has to feed.

  python benchmarks/input_pipeline_speed.py --config=launch/configs/cfi.py:paper \
      --config.data.data_dir=../shared/data/ivif/roadscene [--roofline_json=v5e.json,h100.json] [--batches=100]

  python benchmarks/input_pipeline_speed.py --config=launch/configs/dfc.py:paper [--config.data.render_cache=False]

Reads `--batches` batches of the config's train_dataset (what launch.train reads, same batch size, threads and
workers) after `--warmup` batches (the first epoch decodes every pair; a cached pipeline then only crops), and prints
batches/s. DFC's paper config reads its puppets from a render cache, built (untimed, with a progress bar) when it is
not there yet. Each --roofline_json is a benchmarks/aot_report.py report of the same config's train step: the pipeline
keeps that chip busy only if it delivers more batches/s than the step's roofline estimate (a lower bound on the step
time, so an upper bound on the rate it needs).
"""
import json
import pathlib
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from launch import tasks  # pylint: disable=g-import-not-at-top

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config, e.g. launch/configs/cfi.py:paper.',
                                          lock_config=False)
_BATCHES = flags.DEFINE_integer('batches', 100, 'Timed batches.')
_WARMUP = flags.DEFINE_integer('warmup', 20, 'Untimed batches first (20: more than one epoch of RoadScene\'s 180 '
                                'training pairs at batch 16, so a cache is full).')
_ROOFLINE_JSON = flags.DEFINE_list('roofline_json', [], 'aot_report.py reports to compare with.')
flags.mark_flags_as_required(['config'])


def main(argv):
  del argv
  config = _CONFIG.value
  start = time.perf_counter()
  iterator = iter(tasks.make_task(config).train_dataset(seed=config.seed, process_index=0, process_count=1))
  print(f'pipeline built in {time.perf_counter() - start:.1f} s')
  warmup = _WARMUP.value
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(_BATCHES.value):
    batch = next(iterator)
  rate = _BATCHES.value / (time.perf_counter() - start)
  shapes = {k: f'{v.dtype}{list(v.shape)}' for k, v in batch.items()}
  print(f'input pipeline: {rate:.1f} batches/s of {shapes} ({_BATCHES.value} batches after {warmup} warm-up)')
  for path in _ROOFLINE_JSON.value:
    report = json.loads(pathlib.Path(path).read_text())
    if 'estimate_per_second' not in report:
      print(f"  {report['target']}: no roofline estimate in {path}")
      continue
    needed = report['estimate_per_second']
    print(f"  {report['target']}: roofline ESTIMATE {needed:.2f} steps/s; pipeline / step rate = {rate / needed:.1f}x "
          f"({'keeps up' if rate > needed else 'TOO SLOW'})")


if __name__ == '__main__':
  app.run(main)
