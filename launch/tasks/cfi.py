"""ISFuse/CFI as a training task (launch/task.py): cfi_jax's train step on input_pipeline's fusion datasets."""
import functools
import pathlib
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np

from cfi_jax import inference
from cfi_jax import interventions
from cfi_jax import losses
from cfi_jax import metrics as fusion_metrics
from cfi_jax import steps as cfi_steps
from input_pipeline import errors
from input_pipeline import fusion_data
from input_pipeline import grids
from input_pipeline import images
from launch import task as task_lib


def loss_config_from(config: ml_collections.ConfigDict) -> tuple[losses.LossConfig, dict[str, Any]]:
  """(LossConfig, ISFuse kwargs) of config.ablation with the weights and hole settings of config.loss."""
  overrides = {k: v for k, v in config.loss.to_dict().items() if k != "holes"}
  holes = interventions.HoleConfig(**{k: tuple(v) if isinstance(v, (list, tuple)) else v
                                      for k, v in config.loss.holes.to_dict().items()})
  return losses.ablation(config.ablation, holes=holes, **overrides)


class CFITask(task_lib.Task):
  """Trains ISFuse with the CFI interventions and losses; evaluates with the fusion metrics.

  Evaluation fuses the held-out pairs (config.data.num_eval of them), centre-cropped to one common size (at most
  config.eval.crop_size) so that the network and the metrics compile once; full-size evaluation is launch.evaluate_cfi's
  job. The grid shows IR | VIS | fused for the first config.eval.grid_pairs of them.
  """

  name = "cfi"
  # Looped, vmapped or recomputed views compute the same step (cfi_jax/steps.py), and cached pairs are the same
  # pairs, so a run may switch between them.
  resumable_fields = frozenset({"view_batching", "remat", "data.cache_decoded"})
  # Checkpoints written before these fields existed trained as the release does: every view fed the running
  # statistics, L_f's intensity and gradient terms were the release's, and Adam was not clipped.
  added_field_defaults = {"running_stats": "all_views", "loss.intensity": "release", "loss.gradient": "release",
                          "optimizer.clip_grad_norm": 0.0}

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    try:  # The library's dataclasses validate the values; a bad one is the user's config field.
      self.loss_config, ablation_model_kwargs = loss_config_from(config)
      self.loss_config.holes.check_fits(config.data.crop_size, config.data.crop_size)
      self._model_config = {**config.model.to_dict(), **ablation_model_kwargs}
      self.model = inference.model_from_config(self._model_config)
    except ValueError as e:
      raise errors.ConfigError(f"config.ablation / config.loss / config.model: {e}") from e
    overridden = {k: v for k, v in ablation_model_kwargs.items() if config.model.get(k) != v}
    if overridden:
      # E.g. --config.ablation=no_cfi alone: the ablation decides, and the config (saved in every checkpoint as the
      # experiment) is made to say so.
      logging.warning("config.ablation=%s sets model fields %s that the config said otherwise; the saved config "
                      "records the values that train.", config.ablation, overridden)
      config.model.update(overridden)
    self._eval_pairs = None

  def model_config(self) -> dict[str, Any]:
    return dict(self._model_config)

  def train_dataset(self, *, seed: int, process_index: int, process_count: int):
    return fusion_data.make_train_dataset(self.config.data, seed=seed, batch_size=self.config.batch_size,
                                          process_index=process_index, process_count=process_count)

  def init_state(self, key: jax.Array, example_batch) -> cfi_steps.TrainState:
    tx = cfi_steps.make_optimizer(self.config.optimizer)
    return cfi_steps.create_train_state(key, self.model, tx, image_shape=(1, *example_batch["vis"].shape[1:]))

  def train_step(self, state, batch, key):
    return self.train_step_for(jax.default_backend())(state, batch, key)

  def train_step_for(self, platform: str):
    return functools.partial(cfi_steps.train_step, model=self.model, loss_config=self.loss_config,
                             view_batching=cfi_steps.resolve_view_batching(self.config.view_batching, platform),
                             running_stats=self.config.running_stats, remat=self.config.remat)

  def eval_pairs(self) -> list[dict[str, Any]]:
    """The held-out pairs used for evaluation, centre-cropped to a common size (loaded once)."""
    if self._eval_pairs is None:
      pairs = fusion_data.make_eval_pairs(self.config.data)
      if not pairs:
        raise errors.DataConfigError(f"The held-out split of dataset {self.config.data.name!r} is empty; nothing to "
                                     "evaluate (check data.eval_split, or data.eval_ir_dir and data.eval_vis_dir).")
      height = min([self.config.eval.crop_size] + [p["ir"].shape[0] for p in pairs])
      width = min([self.config.eval.crop_size] + [p["ir"].shape[1] for p in pairs])
      self._eval_pairs = [{"name": p["name"], "ir": images.center_crop(p["ir"], height, width),
                           "vis": images.center_crop(p["vis"], height, width)} for p in pairs]
    return self._eval_pairs

  def evaluate(self, state, step: int) -> tuple[dict[str, float], np.ndarray]:
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    pairs = self.eval_pairs()
    fused = np.stack([images.quantize(inference.fuse_luma(self.model, variables, p["vis"], p["ir"]))
                      for p in pairs])
    ir = np.stack([images.quantize(p["ir"]) for p in pairs])
    vis = np.stack([images.quantize(p["vis"]) for p in pairs])
    per_pair = fusion_metrics.compute_metrics_batch(fused, ir, vis, dialect=self.config.eval.dialect)
    means = {name: float(np.mean(values)) for name, values in per_pair.items()}
    grid = grids.make_grid([[ir[i], vis[i], fused[i]]
                                for i in range(min(self.config.eval.grid_pairs, len(pairs)))])
    return means, grid

  def write_samples(self, directory: pathlib.Path) -> None:
    """Saves the first config.eval.grid_pairs held-out pairs (as evaluated) as ir/<i>.png and vi/<i>.png: a paired
    folder that launch.fuse and launch.evaluate_cfi read."""
    for sub in ("ir", "vi"):
      (directory / sub).mkdir(parents=True, exist_ok=True)
    for i, pair in enumerate(self.eval_pairs()[:self.config.eval.grid_pairs]):
      images.save_fused(directory / "ir" / f"{i}.png", pair["ir"])
      images.save_fused(directory / "vi" / f"{i}.png", pair["vis"])


def make_task(config: ml_collections.ConfigDict) -> CFITask:
  return CFITask(config)
