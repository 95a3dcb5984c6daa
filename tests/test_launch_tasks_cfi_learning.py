"""Training the CFI smoke config improves fusion: the loss falls and the metrics that L_f targets move the right way.

A behaviour check of the whole pipeline (data, interventions, losses, optimizer, loop, evaluation), not a quality bar.
"""
import json

import jax
import numpy as np

from launch import tasks
from launch import trainer
from launch.configs import cfi as cfi_configs


def test_smoke_training_lowers_loss_and_improves_fidelity_metrics(tmp_path):
  config = cfi_configs.get_config("smoke")
  config.num_steps = 40
  config.optimizer.learning_rate = 1e-3
  config.log_every = 5
  config.eval_every = 40
  config.checkpoint_every = 40
  task = tasks.make_task(config)
  example = next(iter(task.train_dataset(seed=0, process_index=0, process_count=1)))
  untrained, _ = task.evaluate(jax.jit(task.init_state)(jax.random.PRNGKey(7), example), step=0)

  trainer.train_and_evaluate(config, tmp_path, task=task, devices=jax.devices()[:1])

  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  losses = [r["loss"] for r in records if "loss" in r]
  assert len(losses) == config.num_steps // config.log_every
  assert np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2])
  trained = next(r for r in reversed(records) if "PSNR" in r)
  # L_f pulls the fused image towards both sources (PSNR, CC) and its edges towards the stronger source edge (Qabf).
  assert trained["PSNR"] > untrained["PSNR"]
  assert trained["CC"] > untrained["CC"]
  assert trained["Qabf"] > untrained["Qabf"]
  # The Laplacian term asks for the sources' edges: an untrained network's output is nearly flat.
  assert trained["AG"] > 2 * untrained["AG"] and trained["SF"] > 2 * untrained["SF"]
