r"""Pose transfer with a trained DFC-Net checkpoint: the target person in the source's pose.

  python -m launch.transfer --checkpoint=DIR/checkpoints --source=pose.png --target=person.png --out=out.png
  python -m launch.transfer --checkpoint=DIR/checkpoints --source=FRAMES_DIR --target=person.png --out=OUT_DIR

With a folder as --source (e.g. the frames of a video), every frame is transferred and written to --out under its
own name. Images are cropped (--crop; by default as the model's training frames were) and resized to the model's
training resolution; outputs are PNG at that size.
"""
import functools
import pathlib
import sys

from absl import app
from absl import flags
import jax
import numpy as np
from PIL import Image
import tqdm

from dfc_jax import train as dfc_train
from input_pipeline import images
from input_pipeline import video_frames
from launch.tasks import dfc as dfc_task

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the flags; only when run as a program, since other binaries (launch.fuse) use the same names."""
  flags.DEFINE_string('checkpoint', None, 'orbax checkpoint directory of a DFC-Net run (WORKDIR/checkpoints).')
  flags.DEFINE_integer('step', None, 'Checkpoint step; the latest by default.')
  flags.DEFINE_string('source', None, 'Pose image, or a folder of pose frames.')
  flags.DEFINE_string('target', None, 'Appearance image (the person to re-pose).')
  flags.DEFINE_string('out', None, 'Output PNG (single source) or output folder (folder source).')
  flags.DEFINE_string('crop', None,
                      "'center': central square of each image (person-centred frames); 'none': the whole image, "
                      "stretched to a square; 'top,left,height,width': that box (pixels). Default: the crop of the "
                      "checkpoint's training frames ('center' for puppets).")
  flags.mark_flags_as_required(['checkpoint', 'source', 'target', 'out'])


def _save_png(path: pathlib.Path, image: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray((np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)).save(path)


def transfer_paths(checkpoint, source, target, out, *, step: int | None = None, crop: str | None = 'center',
                   batch_size: int = 8) -> list[pathlib.Path]:
  """Transfers `target`'s appearance to the pose of `source` (an image or a folder); returns the written paths.

  Raises:
    images.ImageReadError: an input image cannot be read (the message names it).
    dfc_task.DFCCheckpointError: not a DFC-Net checkpoint.
    FileNotFoundError / ValueError: missing checkpoint or folder, bad output path.
  """
  source, out = pathlib.Path(source), pathlib.Path(out)
  generator, g_params, size = dfc_task.load_generator(checkpoint, step)
  run = jax.jit(functools.partial(dfc_train.transfer, generator=generator))
  appearance = video_frames.load_frame(target, size, crop)[None]
  if source.is_dir():
    frames = video_frames.list_frames(source)
    if out.suffix:
      raise ValueError(f'{out}: with a folder as --source, --out must be a folder (it has suffix {out.suffix})')
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
    raise ValueError(f'{out}: output must be a .png file')
  output = np.asarray(run(g_params, video_frames.load_frame(source, size, crop)[None], appearance))[0]
  _save_png(out, output)
  return [out]


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    crop = video_frames.parse_crop(FLAGS.crop or dfc_task.training_crop(FLAGS.checkpoint, FLAGS.step))
    written = transfer_paths(FLAGS.checkpoint, FLAGS.source, FLAGS.target, FLAGS.out, step=FLAGS.step, crop=crop)
  except (FileNotFoundError, ValueError) as e:  # ImageReadError and DFCCheckpointError are ValueErrors
    sys.exit(f'Error: {e}')
  print(f'Wrote {len(written)} image(s): {written[0]}' + (' ...' if len(written) > 1 else ''))


if __name__ == '__main__':
  define_flags()
  app.run(main)
