r"""Turns a folder of infrared-visible pairs into a TFDS dataset (array_record; no TensorFlow needed).

  python -m launch.build_tfds --source_dir=MSRS --name=msrs --data_dir=~/tensorflow_datasets [--skip_bad]

`source_dir` holds <split>/ir/ + <split>/vi/ (e.g. train/ and test/), or ir/ + vi/ directly (one 'train' split).
Train on it with --config.data.name=tfds --config.data.tfds_name=msrs --config.data.tfds_data_dir=DIR.
"""
from collections.abc import Sequence
import os

from absl import app
from absl import flags
from absl import logging

from input_pipeline import tfds_fusion
from launch import cli

FLAGS = flags.FLAGS


def define_flags() -> None:
  # Defined only when run as a program: launch.fuse also has --skip_bad, and tests import both in one process.
  flags.DEFINE_string('source_dir', None, 'Folder of pairs: <split>/ir + <split>/vi, or ir + vi.', required=True)
  flags.DEFINE_string('name', None, 'Dataset name (lower_snake_case), e.g. msrs.', required=True)
  flags.DEFINE_string('data_dir', os.path.expanduser('~/tensorflow_datasets'),
                      'Where TFDS datasets live; the dataset goes to <data_dir>/<name>/1.0.0.')
  flags.DEFINE_bool('skip_bad', False, 'Leave out (and report) unpaired, unreadable or mismatched files.')
  flags.DEFINE_enum('ir_bit_depth', '8', ['8', '16'], 'Bit depth of the infrared images.')
  flags.DEFINE_enum('vis_bit_depth', '8', ['8', '16'], 'Bit depth of the visible images (16: gray only).')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # The shell leaves a '~' after '=' (--data_dir=~/x) alone, and tfds would make a folder named '~'.
  builder = tfds_fusion.build_dataset(os.path.expanduser(FLAGS.source_dir), name=FLAGS.name,
                                      data_dir=os.path.expanduser(FLAGS.data_dir), skip_bad=FLAGS.skip_bad,
                                      ir_bit_depth=int(FLAGS.ir_bit_depth), vis_bit_depth=int(FLAGS.vis_bit_depth))
  sizes = ', '.join(f'{split}: {info.num_examples}' for split, info in sorted(builder.info.splits.items()))
  logging.info('Dataset %r in %s (%s pairs); %d skipped.', FLAGS.name, builder.data_dir, sizes,
               len(builder.skipped))


if __name__ == '__main__':
  define_flags()
  cli.run(main)
