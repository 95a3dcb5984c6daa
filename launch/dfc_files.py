"""DFC-Net on files: pose transfer of images or frame folders, and evaluating a checkpoint on its test splits.

The library under launch.transfer and launch.evaluate_dfc (no flags, no process exit; errors are ProjectErrors
naming the file, folder or checkpoint).
"""
import functools
import json
import pathlib

import jax
import numpy as np
from PIL import Image
import tqdm

from dfc_jax import evaluate as dfc_evaluate
from dfc_jax import steps as dfc_steps
from input_pipeline import errors
from input_pipeline import images
from input_pipeline import pose_data
from input_pipeline import puppets
from input_pipeline import video_frames
from launch.tasks import dfc as dfc_task


def _save_png(path: pathlib.Path, image: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(images.quantize(image)).save(path)


def transfer_paths(checkpoint, source, target, out, *, step: int | None = None, crop: str | None = 'center',
                   batch_size: int = 8) -> list[pathlib.Path]:
  """Transfers `target`'s appearance to the pose of `source` (an image or a folder); returns the written paths.

  Raises:
    images.ImageReadError: an input image cannot be read (the message names it).
    dfc_task.DFCCheckpointError: not a DFC-Net checkpoint.
    errors.ProjectError: missing checkpoint or folder, bad output path.
  """
  source, out = pathlib.Path(source), pathlib.Path(out)
  generator, g_params, size = dfc_task.load_generator(checkpoint, step)
  run = jax.jit(functools.partial(dfc_steps.transfer, generator=generator))
  appearance = video_frames.load_frame(target, size, crop)[None]
  if source.is_dir():
    frames = video_frames.list_frames(source)
    if out.suffix:
      raise errors.ConfigError(f'{out}: with a folder as --source, --out must be a folder (it has suffix {out.suffix})')
    written = []
    for start in tqdm.trange(0, len(frames), batch_size, desc='transfer', unit='batch'):
      chunk = frames[start:start + batch_size]
      poses = np.stack([video_frames.load_frame(p, size, crop) for p in chunk])
      outputs = np.asarray(run(g_params, poses, np.repeat(appearance, len(chunk), axis=0)))
      for path, output in zip(chunk, outputs):
        written.append(out / f'{path.stem}.png')
        _save_png(written[-1], output)
    return written
  if not source.exists():
    raise images.ImageReadError(f'{source}: file not found')
  if out.suffix.lower() != '.png':
    raise errors.ConfigError(f'{out}: --out must be a .png file')
  output = np.asarray(run(g_params, video_frames.load_frame(source, size, crop)[None], appearance))[0]
  _save_png(out, output)
  return [out]


def evaluate_checkpoint(checkpoint, out, *, splits, num_samples: int, calibration_samples: int, grid_rows: int,
                        step: int | None = None, sample_seed: int = 1, test_frames_dir: str | None = None,
                        regressor_steps: int = 2000, regressor_renders: int = 4096
                        ) -> dict[str, dict[str, dict[str, float]]]:
  """{split: {row: {metric: mean}}} of a checkpoint (rows 'model' and dfc_evaluate.TRIVIAL_ROWS, all on the same
  pairs); writes out/metrics.json and out/<split>.png.

  `splits` are puppet splits; a video-frames checkpoint is evaluated on its one test split (its held-out frames, or
  `test_frames_dir`). Puppet keypoint error comes from the fixed joint regressor (trained for regressor_steps on
  regressor_renders pairs, or read from its cache), never from the model's pose encoder.
  """
  data_config = dfc_task.training_data_config(checkpoint, step)
  if data_config.name == 'puppets':
    if test_frames_dir:
      raise errors.ConfigError(f'{checkpoint}: --test_frames_dir applies to checkpoints trained on video frames; '
                               'this one was trained on puppets')
    for split in splits:
      if split not in puppets.SPLITS[:3]:
        raise errors.ConfigError(f'unknown split {split!r}; choose from {puppets.SPLITS[:3]}')
  elif test_frames_dir:
    data_config.test_frames_dir = test_frames_dir
  splits = pose_data.eval_splits(data_config, splits)
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  generator, g_params, _ = dfc_task.load_generator(checkpoint, step)
  evaluator = dfc_evaluate.Evaluator(generator)
  joints_of = encoder_map = None
  if data_config.name == 'puppets':
    joints_of = dfc_task.fixed_joint_regressor(data_config, regressor_steps, regressor_renders)
    encoder_map = (dfc_task.named_joints_readout(generator, data_config)
                   if dfc_task.trained_on_joints(checkpoint, step) else
                   evaluator.encoder_calibration(g_params,
                                                 pose_data.make_calibration_set(data_config, calibration_samples)))
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
