"""ISFuse/CFI training configs: `python -m launch.train --config=launch/configs/cfi.py:VARIANTS --workdir=DIR`.

VARIANTS is a comma-separated list applied in order (as big_vision's config arguments), e.g. `:demo`,
`:paper,smoke` (the paper's data pipeline at smoke sizes) or `:demo,no_cfi` (an ablation).
  smoke: seconds; a tiny network on 32x32 crops (synthetic scenes unless another variant picks the data), for tests.
  demo:  a few minutes on a 2-core CPU on the embedded synthetic scenes (no download); leaves a model that fuses.
  paper: the authors' release settings (Adam 1e-4, batch 16, 256x256 crops, all five views, alpha 0.1, beta 0.05)
         on a folder of pairs given with --config.data.data_dir.
  Any ablation name (full, no_inv, no_nec, no_inv_no_nec, lf_only, comp_only, rand_only, dropout_only, no_cfi) sets
  config.ablation, and for no_cfi also model.use_cfi=False, so the saved config says what trains.

The config holds values only; launch/tasks/cfi.py builds the library's dataclasses (cfi_jax.losses.LossConfig, the
input pipeline's data config) from them. config.loss has LossConfig's defaults, config.data every field of
input_pipeline.fusion_data.default_data_config() (tests/test_launch_tasks_cfi.py keeps them in step).
"""
import math

import ml_collections

# The one project import of this config: the error type (no dependencies of its own).
from input_pipeline import errors

# The release trains 50 epochs; RoadScene's training split (the likely training set) has 180 pairs.
_PAPER_EPOCHS = 50
_PAPER_TRAIN_PAIRS = 180
SIZE_VARIANTS = ("smoke", "demo", "paper")
# cfi_jax.losses.ABLATIONS, by name (configs hold values, not library imports).
ABLATIONS = ("full", "no_inv", "no_nec", "no_inv_no_nec", "lf_only", "comp_only", "rand_only", "dropout_only",
             "no_cfi")
# What each ablation changes in the model (the rest of an ablation is the loss's: config.ablation).
_ABLATION_MODEL_FIELDS = {"no_cfi": {"use_cfi": False}}


def _loss_defaults() -> ml_collections.ConfigDict:
  """cfi_jax.losses.LossConfig's weights and readings (its view switches are config.ablation's)."""
  return ml_collections.ConfigDict(dict(
      alpha=0.1, beta=0.05, lambda_grad=1.0, intensity="release", gradient="release", eta=0.3, entropy_sign="release",
      nec_mode="release", nec_margin=0.1,
      holes=dict(square_size=(16, 16), disk_radius=(8, 8), num_holes=(1, 6), p_square=0.7)))


def _data_defaults() -> ml_collections.ConfigDict:
  """The fusion pipelines' data fields (documented in input_pipeline/fusion_data.py)."""
  return ml_collections.ConfigDict(dict(
      name="synthetic", crop_size=256, threads=2, workers=0, num_eval=8, num_synthetic=1024, synthetic_size=320,
      synthetic_seed=0, data_dir="", ir_dir="", vis_dir="", eval_ir_dir="", eval_vis_dir="", skip_bad=False,
      tfds_name="", tfds_data_dir="", train_split="train", eval_split="test", cache_decoded=False))


def get_config(variants: str = "demo") -> ml_collections.ConfigDict:
  """The config of comma-separated `variants` (see the module docstring), applied in order."""
  names = [v.strip() for v in variants.split(",") if v.strip()]
  unknown = [v for v in names if v not in SIZE_VARIANTS + ABLATIONS]
  if unknown or not any(name in SIZE_VARIANTS for name in names):
    raise errors.ConfigArgumentError(
        f"launch/configs/cfi.py:{variants}: need one or more of {', '.join(SIZE_VARIANTS)}, optionally with an "
        f"ablation ({', '.join(ABLATIONS)}), comma-separated" + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
  config = _base_config()
  for name in names:
    if name in ABLATIONS:
      config.ablation = name
      config.model.update(_ABLATION_MODEL_FIELDS.get(name, {}))
    else:
      _apply_size_variant(config, name)
  return config


def _base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = "cfi"
  config.seed = 0
  # One of losses.ABLATIONS: 'full', 'no_inv', 'no_nec', 'no_inv_no_nec', 'lf_only', 'comp_only', 'rand_only',
  # 'dropout_only', 'no_cfi'.
  config.ablation = "full"
  config.model = ml_collections.ConfigDict(dict(features=32, use_cfi=True, pool_size=8, dtype="float32"))
  config.loss = _loss_defaults()
  config.optimizer = ml_collections.ConfigDict(dict(learning_rate=1e-4, b1=0.9, b2=0.999, eps=1e-8,
                                                    clip_grad_norm=0.0))
  config.data = _data_defaults()
  # Training-time evaluation on the data.num_eval held-out pairs, centre-cropped to at most crop_size; the grid
  # shows the first grid_pairs of them.
  config.eval = ml_collections.ConfigDict(dict(grid_pairs=4, crop_size=256, dialect="tang2023"))
  config.keep_checkpoints = 3
  # How the five views run inside the jitted step: 'vmap', 'loop' or 'auto' (loop on CPU, vmap on accelerators);
  # the same computation either way (cfi_jax/steps.py).
  config.view_batching = "auto"
  # "views": the backward pass recomputes one view's forward at a time (cfi_jax/steps.py apply_views), so only one
  # view's activations are alive: the paper step needs 8.1 GiB on a TPU v5e instead of 24 GB, at 1.33x the FLOPs
  # and (XLA's count) 2.3x the bytes. "none" keeps every activation: faster where it fits (v5p, H100). The same
  # computation either way.
  config.remat = "none"
  # Which passes feed the BatchNorm running statistics that evaluation uses: "all_views" (the release: clean, masked
  # and modality-dropped) or "clean_view" (only the clean pass, the kind of input evaluation sees).
  config.running_stats = "all_views"
  # Of the train step's float32 convolutions and matmuls (launch/trainer.py): jax's "default" is one bfloat16 pass
  # on TPUs and TF32 on recent NVIDIA GPUs (what the release most likely trained its convolutions at: PyTorch's
  # default on its RTX 4090), "high" three bfloat16 passes on TPUs, "highest" full float32; CPUs compute float32
  # whatever the value. More passes cost a TPU bytes, and the step is memory-bound: a smoke fusion program at
  # "highest" accessed 1.35x the bytes and compiled 5x slower. Fusion and evaluation always run at "highest"
  # (cfi_jax/inference.py).
  config.matmul_precision = "default"
  return config


def _apply_size_variant(config: ml_collections.ConfigDict, variant: str) -> None:
  if variant == "smoke":
    config.model.features = 8
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
    # Sized for a 2-core CPU: a half-width network on 48x48 crops, and a learning rate far above the release's so
    # that a few hundred steps suffice. What makes it fuse (README, demo):
    # - L_f's intensity term L1(F, max(vis, ir)) instead of the release's L1(F, vis) + L1(F, ir), which is flat
    #   between the sources and left warm targets at any brightness between their IR and visible values;
    # - L_f's gradient term L1(Lap F, Lap max(vis, ir)), weight 3, instead of the release's L1(|Lap F|, max(|Lap vis|,
    #   |Lap ir|)): that one asks for the larger Laplacian magnitude with either sign, so even its per-image minimiser
    #   carries texture correlated with neither source and loses to the plain average on VIF and SSIM
    #   (benchmarks/cfi_lf_optimum.py); this one shares its minimiser with the intensity term;
    # - the gradients clipped to norm 1: at initialisation the modality-dropout views give the first encoder
    #   stages float32-rounding gradients ~1e7 (cfi_jax.steps.make_optimizer), which froze them through Adam;
    # - evaluation mode normalises with the running statistics of the clean pass only: the release's mix with the
    #   zero-input views gave noisier fusions.
    config.model.features = 16
    config.optimizer.learning_rate = 3e-3
    config.optimizer.clip_grad_norm = 1.0
    config.loss.intensity = "max"
    config.loss.gradient = "of_max"
    config.loss.lambda_grad = 3.0
    config.running_stats = "clean_view"
    config.data.name = "synthetic"
    config.data.crop_size = 48
    config.data.num_synthetic = 200
    config.data.synthetic_size = 192
    # The held-out pairs the README fuses and scores: enough of them, and large enough, to judge a fusion by.
    config.data.num_eval = 8
    config.batch_size = 8
    # 700 steps fit the README's 5 minutes on the idle 2-core machine (README, demo).
    config.num_steps = 700
    config.log_every = 20
    config.eval_every = 350
    config.checkpoint_every = 350
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
    config.remat = "views"
    # 180 small pairs: decode each once (benchmarks/input_pipeline_speed.py).
    config.data.cache_decoded = True
