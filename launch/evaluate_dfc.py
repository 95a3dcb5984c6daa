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
import json
import pathlib
import sys

from absl import app
from absl import flags
from PIL import Image

from dfc_jax import evaluate as dfc_evaluate
from input_pipeline import pose_data
from input_pipeline import puppets
from launch.tasks import dfc as dfc_task

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the flags; only when run as a program, since other binaries (launch.fuse) use the same names."""
  flags.DEFINE_string('checkpoint', None, 'orbax checkpoint directory of a DFC-Net run (WORKDIR/checkpoints).')
  flags.DEFINE_integer('step', None, 'Checkpoint step; the latest by default.')
  flags.DEFINE_string('out', None, 'Output folder for metrics.json and the grids.')
  flags.DEFINE_list('splits', ['test_unseen_characters', 'test_unseen_animations'],
                    f'Puppet splits to evaluate, from {puppets.SPLITS[:3]}; video frames have one test split.')
  flags.DEFINE_string('test_frames_dir', None,
                      'Video-frames checkpoints: evaluate on these frames instead of the held-out ones.')
  flags.DEFINE_integer('num_samples', 256, 'Pairs per split.')
  flags.DEFINE_integer('calibration_samples', 512,
                       "Train-split renders used to map the model's own keypoints to the true joints "
                       '(encoder_keypoint_error).')
  flags.DEFINE_integer('grid_rows', 8, 'Rows of each PNG grid.')
  flags.DEFINE_integer('sample_seed', 1, 'Seed of the drawn test pairs; training-time evaluation draws seed 0.')
  flags.DEFINE_integer('regressor_steps', 800,
                       'Training steps of the fixed joint regressor that scores keypoint error (cached after the '
                       'first run).')
  flags.mark_flags_as_required(['checkpoint', 'out'])


def evaluate_checkpoint(checkpoint, out, *, splits, num_samples: int, calibration_samples: int, grid_rows: int,
                        step: int | None = None, sample_seed: int = 1, test_frames_dir: str | None = None,
                        regressor_steps: int = 800) -> dict[str, dict[str, dict[str, float]]]:
  """{split: {row: {metric: mean}}} of a checkpoint (rows 'model' and dfc_evaluate.TRIVIAL_ROWS, all on the same
  pairs); writes out/metrics.json and out/<split>.png.

  `splits` are puppet splits; a video-frames checkpoint is evaluated on its one test split (its held-out frames, or
  `test_frames_dir`). Puppet keypoint error comes from the fixed joint regressor (trained for regressor_steps, or
  read from its cache), never from the model's pose encoder.
  """
  data_config = dfc_task.training_data_config(checkpoint, step)
  if data_config.name == 'puppets':
    if test_frames_dir:
      raise ValueError(f'{checkpoint}: --test_frames_dir applies to checkpoints trained on video frames; this one '
                       'was trained on puppets')
    for split in splits:
      if split not in puppets.SPLITS[:3]:
        raise ValueError(f'unknown split {split!r}; choose from {puppets.SPLITS[:3]}')
  elif test_frames_dir:
    data_config.test_frames_dir = test_frames_dir
  splits = pose_data.eval_splits(data_config, splits)
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  generator, g_params, _ = dfc_task.load_generator(checkpoint, step)
  evaluator = dfc_evaluate.Evaluator(generator)
  joints_of = encoder_map = None
  if data_config.name == 'puppets':
    joints_of = dfc_task.fixed_joint_regressor(data_config, regressor_steps)
    encoder_map = evaluator.encoder_calibration(g_params,
                                                pose_data.make_calibration_set(data_config, calibration_samples))
  results = {}
  for split in splits:
    eval_set = pose_data.make_eval_set(data_config, split, num_samples, sample_seed=sample_seed)
    results[split], output = evaluator.evaluate(g_params, eval_set, joints_of, encoder_map)
    grid = dfc_evaluate.image_grid([eval_set['source'], eval_set['target'], output, eval_set['truth']], grid_rows)
    Image.fromarray(grid).save(out / f'{split}.png')
  (out / 'metrics.json').write_text(json.dumps(results, indent=2) + '\n')
  return results


def format_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
  """A Markdown table per split: one row per output (the model, then the trivial rows), one column per metric."""
  lines = []
  for split, rows in results.items():
    names = list(dict.fromkeys(k for values in rows.values() for k in values))
    lines += [f'{split}:', '| output | ' + ' | '.join(names) + ' |', '|---|' + '---|' * len(names)]
    lines += [f'| {row} | ' + ' | '.join(f'{values[n]:.4f}' if n in values else '-' for n in names) + ' |'
              for row, values in rows.items()]
    lines.append('')
  return '\n'.join(lines)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    results = evaluate_checkpoint(FLAGS.checkpoint, FLAGS.out, splits=FLAGS.splits, num_samples=FLAGS.num_samples,
                                  calibration_samples=FLAGS.calibration_samples, grid_rows=FLAGS.grid_rows,
                                  step=FLAGS.step, sample_seed=FLAGS.sample_seed,
                                  test_frames_dir=FLAGS.test_frames_dir, regressor_steps=FLAGS.regressor_steps)
  except (FileNotFoundError, ValueError) as e:  # DFCCheckpointError is a ValueError
    sys.exit(f'Error: {e}')
  print(format_table(results))


if __name__ == '__main__':
  define_flags()
  app.run(main)
