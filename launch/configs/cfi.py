"""ISFuse/CFI training configs: `python -m launch.train --config=launch/configs/cfi.py:VARIANT --workdir=DIR`.

Variants:
  smoke: seconds; a tiny network on 32x32 synthetic crops, for tests.
  demo:  a few minutes on a 2-core CPU on the embedded synthetic scenes (no download); leaves a model that fuses.
  paper: the authors' release settings (Adam 1e-4, batch 16, 256x256 crops, all five views, alpha 0.1, beta 0.05)
         on a folder of pairs given with --config.data.data_dir.
"""
import dataclasses
import math

import ml_collections

from cfi_jax import losses
from input_pipeline import fusion_data

# Fields of losses.LossConfig that config.ablation sets; the other LossConfig fields live in config.loss.
_ABLATION_SWITCHES = frozenset({"use_inv", "use_nec", "complementary", "random", "dropout"})

# The release trains 50 epochs; RoadScene's training split (the likely training set) has 180 pairs.
_PAPER_EPOCHS = 50
_PAPER_TRAIN_PAIRS = 180


def _loss_defaults() -> ml_collections.ConfigDict:
  defaults = losses.LossConfig()
  fields = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(defaults)
            if f.name not in _ABLATION_SWITCHES}
  fields["holes"] = dataclasses.asdict(defaults.holes)
  return ml_collections.ConfigDict(fields)


def get_config(variant: str = "demo") -> ml_collections.ConfigDict:
  """The config of `variant` ('smoke' | 'demo' | 'paper')."""
  config = ml_collections.ConfigDict()
  config.task = "cfi"
  config.seed = 0
  # One of losses.ABLATIONS: 'full', 'no_inv', 'no_nec', 'no_inv_no_nec', 'lf_only', 'comp_only', 'rand_only',
  # 'dropout_only', 'no_cfi'.
  config.ablation = "full"
  config.model = ml_collections.ConfigDict(dict(features=32, use_cfi=True, pool_size=8, dtype="float32"))
  config.loss = _loss_defaults()
  config.optimizer = ml_collections.ConfigDict(dict(learning_rate=1e-4, b1=0.9, b2=0.999, eps=1e-8))
  config.data = fusion_data.default_data_config()
  # Training-time evaluation on the data.num_eval held-out pairs, centre-cropped to at most crop_size; the grid
  # shows the first grid_pairs of them.
  config.eval = ml_collections.ConfigDict(dict(grid_pairs=4, crop_size=256, dialect="tang2023"))
  config.keep_checkpoints = 3
  # How the five views run inside the jitted step: 'vmap', 'loop' or 'auto' (loop on CPU, vmap on accelerators);
  # the same computation either way (cfi_jax/train.py).
  config.view_batching = "auto"
  # Which passes feed the BatchNorm running statistics that evaluation uses: "all_views" (the release: clean, masked
  # and modality-dropped) or "clean_view" (only the clean pass, the kind of input evaluation sees).
  config.running_stats = "all_views"

  if variant == "smoke":
    config.model.features = 8
    config.data.name = "synthetic"
    config.data.crop_size = 32
    config.data.num_synthetic = 16
    config.data.synthetic_size = 48
    config.batch_size = 8
    config.num_steps = 6
    config.log_every = 2
    config.eval_every = 6
    config.checkpoint_every = 2
    config.data.num_eval = 2
    config.eval.grid_pairs = 2
    config.eval.crop_size = 48
  elif variant == "demo":
    # Sized for a 2-core CPU: a quarter-width network on 48x48 crops, and 10x the release's learning rate so that a
    # few hundred steps suffice. Evaluation mode normalises with the running statistics of the clean pass only: the
    # release's mix with the zero-input views gave noisier, less faithful fusions here (README, demo).
    config.model.features = 8
    config.optimizer.learning_rate = 1e-3
    config.running_stats = "clean_view"
    config.data.name = "synthetic"
    config.data.crop_size = 48
    config.data.num_synthetic = 200
    config.data.synthetic_size = 192
    # The held-out pairs the README fuses and scores: enough of them, and large enough, to judge a fusion by.
    config.data.num_eval = 8
    config.batch_size = 8
    config.num_steps = 300
    config.log_every = 20
    config.eval_every = 100
    config.checkpoint_every = 100
    config.eval.grid_pairs = 8
    config.eval.crop_size = 192
  elif variant == "paper":
    config.data.name = "folder"
    config.data.crop_size = 256
    config.batch_size = 16
    # At least 50 epochs of 180 crops: ceil(50 * 180 / 16) = 563 steps (the release's drop_last loader runs 550).
    config.num_steps = math.ceil(_PAPER_EPOCHS * _PAPER_TRAIN_PAIRS / config.batch_size)
    # About every 10 epochs, like the release's checkpoints.
    config.checkpoint_every = math.ceil(10 * _PAPER_TRAIN_PAIRS / config.batch_size)
    config.eval_every = config.checkpoint_every
    config.log_every = 10
  else:
    raise ValueError(f"Unknown variant {variant!r}; choose smoke, demo or paper.")
  return config
