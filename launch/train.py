r"""Trains a model with the shared loop (launch/trainer.py); resumes automatically from --workdir.

  python -m launch.train --config=launch/configs/cfi.py:demo --workdir=/tmp/cfi_demo
  python -m launch.train --config=launch/configs/cfi.py:paper --config.data.data_dir=DATA --workdir=runs/paper

Any config field can be overridden, e.g. --config.batch_size=8 --config.num_steps=100. Multi-host: start one process
per host with the same --coordinator_address=HOST:PORT and --num_processes, and --process_id=0..N-1.
"""
from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags

from input_pipeline import errors
from launch import cli
from launch import compile_cache
from launch import trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file, e.g. launch/configs/cfi.py:demo.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory: checkpoints, logs, TensorBoard, eval images.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "HOST:PORT of process 0, for multi-process training (jax.distributed).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.mark_flags_as_required(["config", "workdir"])


def _initialize_distributed() -> None:
  if _COORDINATOR.value is None:
    if _NUM_PROCESSES.value is not None or _PROCESS_ID.value is not None:
      raise app.UsageError("--num_processes/--process_id need --coordinator_address.")
    return
  # CPU-only hosts need a collectives backend for cross-process all-reduces; it must be set before initialising.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                             process_id=_PROCESS_ID.value)


def _config() -> ml_collections.ConfigDict:
  """--config's value. config_flags defers a file that could not be loaded to the first use of the config; here it
  becomes a ConfigError naming the file."""
  config = _CONFIG.value
  try:
    config.get("task")
  except OSError as e:
    reason = str(e).strip().splitlines()[-1].strip()
    raise errors.ConfigError(f"--config: the config file cannot be loaded ({reason}); pass e.g. "
                             "--config=launch/configs/cfi.py:demo") from e
  return config


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  compile_cache.enable()  # A resumed run skips the train step's compilation.
  _initialize_distributed()
  logging.info("Process %d/%d, %d local / %d global devices.", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  trainer.train_and_evaluate(_config(), _WORKDIR.value)


if __name__ == "__main__":
  cli.run(main)
