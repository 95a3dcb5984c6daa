r"""Turns a folder of infrared-visible pairs into a TFDS dataset (array_record; no TensorFlow needed).

  python -m launch.build_tfds --source_dir=MSRS --name=msrs --data_dir=~/tensorflow_datasets [--skip_bad]

`source_dir` holds <split>/ir/ + <split>/vi/ (e.g. train/ and test/), or ir/ + vi/ directly (one 'train' split).
Train on it with --config.data.name=tfds --config.data.tfds_name=msrs --config.data.tfds_data_dir=DIR.
"""
from collections.abc import Sequence

from absl import app
from absl import flags
from absl import logging

from input_pipeline import tfds_fusion
from launch import cli

_SOURCE_DIR = flags.DEFINE_string('source_dir', None, 'Folder of pairs: <split>/ir + <split>/vi, or ir + vi.',
                                  required=True)
_NAME = flags.DEFINE_string('name', None, 'Dataset name (lower_snake_case), e.g. msrs.', required=True)
_DATA_DIR = flags.DEFINE_string('data_dir', '~/tensorflow_datasets',
                                'Where TFDS datasets live; the dataset goes to <data_dir>/<name>/1.0.0.')
_SKIP_BAD = flags.DEFINE_bool('skip_bad', False, 'Leave out (and report) unpaired, unreadable or mismatched files.')
_IR_BIT_DEPTH = flags.DEFINE_enum('ir_bit_depth', '8', ['8', '16'], 'Bit depth of the infrared images.')
_VIS_BIT_DEPTH = flags.DEFINE_enum('vis_bit_depth', '8', ['8', '16'],
                                   'Bit depth of the visible images (16: gray only).')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  builder = tfds_fusion.build_dataset(_SOURCE_DIR.value, name=_NAME.value, data_dir=_DATA_DIR.value,
                                      skip_bad=_SKIP_BAD.value, ir_bit_depth=int(_IR_BIT_DEPTH.value),
                                      vis_bit_depth=int(_VIS_BIT_DEPTH.value))
  sizes = ', '.join(f'{split}: {info.num_examples}' for split, info in sorted(builder.info.splits.items()))
  logging.info('Dataset %r in %s (%s pairs); %d skipped.', _NAME.value, builder.data_dir, sizes,
               len(builder.skipped))


if __name__ == '__main__':
  cli.run(main)
