r"""Evaluates a DFC-Net checkpoint on its dataset's test splits: SSIM, PSNR, LPIPS (AlexNet), and for puppets also
silhouette IoU and foreground L1 (with the renderer's true silhouettes) and keypoint error in pixels (a fixed joint
regressor trained on renders, the same for every row); beside the model, the trivial outputs copy_target,
background and blurred_target on the same pairs. A PNG grid per split (rows: source | target | output | truth).

  python -m launch.evaluate_dfc --checkpoint=WORKDIR/checkpoints --out=DIR [--num_samples=256]
  python -m launch.evaluate_dfc --checkpoint=WORKDIR/checkpoints --out=DIR --test_frames_dir=FRAMES

The data (puppet world and resolution, or video frames and their held-out test frames) is the one the checkpoint
was trained on (its saved experiment config); --test_frames_dir evaluates a video-frames checkpoint on other
frames of the same person. Writes DIR/metrics.json ({split: {row: {metric: value}}}) and DIR/<split>.png, and
prints the table.
"""
from absl import app
from absl import flags

from input_pipeline import puppets
from launch import cli
from launch import dfc_files

_CHECKPOINT = flags.DEFINE_string('checkpoint', None,
                                  'orbax checkpoint directory of a DFC-Net run (WORKDIR/checkpoints).')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step; the newest readable one by default.')
_OUT = flags.DEFINE_string('out', None, 'Output folder for metrics.json and the grids.')
_SPLITS = flags.DEFINE_list('splits', ['test_unseen_characters', 'test_unseen_animations'],
                            f'Puppet splits to evaluate, from {puppets.SPLITS[:3]}; video frames have one test split.')
_TEST_FRAMES_DIR = flags.DEFINE_string(
    'test_frames_dir', None, 'Video-frames checkpoints: evaluate on these frames instead of the held-out ones.')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 256, 'Pairs per split.')
_CALIBRATION_SAMPLES = flags.DEFINE_integer(
    'calibration_samples', 512,
    "Train-split renders used to map the model's own learned keypoints to the true joints (encoder_keypoint_error); "
    'unused for a pose encoder supervised with the joints, whose keypoints are read as the joints.')
_GRID_ROWS = flags.DEFINE_integer('grid_rows', 8, 'Rows of each PNG grid.')
_SAMPLE_SEED = flags.DEFINE_integer('sample_seed', 1,
                                    'Seed of the drawn test pairs; training-time evaluation draws seed 0.')
_REGRESSOR_STEPS = flags.DEFINE_integer(
    'regressor_steps', 2000,
    'Training steps of the fixed joint regressor that scores keypoint error (cached after the first run).')
_REGRESSOR_RENDERS = flags.DEFINE_integer(
    'regressor_renders', 4096,
    'Train-split pairs (their source and truth renders) the fixed joint regressor learns from.')
flags.mark_flags_as_required(['checkpoint', 'out'])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  results = dfc_files.evaluate_checkpoint(
      _CHECKPOINT.value, _OUT.value, splits=_SPLITS.value, num_samples=_NUM_SAMPLES.value,
      calibration_samples=_CALIBRATION_SAMPLES.value, grid_rows=_GRID_ROWS.value, step=_STEP.value,
      sample_seed=_SAMPLE_SEED.value, test_frames_dir=_TEST_FRAMES_DIR.value, regressor_steps=_REGRESSOR_STEPS.value,
      regressor_renders=_REGRESSOR_RENDERS.value)
  print(dfc_files.format_table(results))


if __name__ == '__main__':
  cli.run(main)
