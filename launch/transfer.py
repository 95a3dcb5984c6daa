r"""Pose transfer with a trained DFC-Net checkpoint: the target person in the source's pose.

  python -m launch.transfer --checkpoint=DIR/checkpoints --source=pose.png --target=person.png --out=out.png
  python -m launch.transfer --checkpoint=DIR/checkpoints --source=FRAMES_DIR --target=person.png --out=OUT_DIR

With a folder as --source (e.g. the frames of a video), every frame is transferred and written to --out under its
own name. Images are cropped (--crop; by default as the model's training frames were) and resized to the model's
training resolution; outputs are PNG at that size.
"""
from absl import app
from absl import flags

from input_pipeline import video_frames
from launch import cli
from launch import dfc_files
from launch.tasks import dfc as dfc_task

_CHECKPOINT = flags.DEFINE_string('checkpoint', None,
                                  'orbax checkpoint directory of a DFC-Net run (WORKDIR/checkpoints).')
_STEP = flags.DEFINE_integer('step', None, 'Checkpoint step; the newest readable one by default.')
_SOURCE = flags.DEFINE_string('source', None, 'Pose image, or a folder of pose frames.')
_TARGET = flags.DEFINE_string('target', None, 'Appearance image (the person to re-pose).')
_OUT = flags.DEFINE_string('out', None, 'Output PNG (single source) or output folder (folder source).')
_CROP = flags.DEFINE_string(
    'crop', None, "'center': central square of each image (person-centred frames); 'none': the whole image, "
    "stretched to a square; 'top,left,height,width': that box (pixels). Default: the crop of the checkpoint's "
    "training frames ('center' for puppets).")
flags.mark_flags_as_required(['checkpoint', 'source', 'target', 'out'])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  crop = video_frames.parse_crop(_CROP.value or dfc_task.training_crop(_CHECKPOINT.value, _STEP.value))
  written = dfc_files.transfer_paths(_CHECKPOINT.value, _SOURCE.value, _TARGET.value, _OUT.value, step=_STEP.value,
                                     crop=crop)
  print(f'Wrote {len(written)} image(s): {written[0]}' + (' ...' if len(written) > 1 else ''))


if __name__ == '__main__':
  cli.run(main)
