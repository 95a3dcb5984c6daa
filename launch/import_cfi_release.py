r"""Imports the authors' released PyTorch ISFuse weights (best.pth) into an orbax checkpoint.

  python -m launch.import_cfi_release --torch_checkpoint=PATH/best.pth --output_dir=DIR

Needs the optional torch extra (pip install torch==2.13.0). The checkpoint holds {'params', 'batch_stats'} and the
model config, and restores with launch.checkpoints.restore_model_variables (e.g. `launch.fuse --checkpoint=DIR`).
The work is launch.release_weights'.
"""
from collections.abc import Sequence

from absl import app
from absl import flags

from launch import cli
from launch import release_weights

_TORCH_CHECKPOINT = flags.DEFINE_string('torch_checkpoint', None, 'Path of the released PyTorch state dict (.pth).')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Empty or new directory for the orbax checkpoint.')


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _TORCH_CHECKPOINT.value or not _OUTPUT_DIR.value:
    raise app.UsageError('--torch_checkpoint and --output_dir are required')
  release_weights.import_checkpoint(_TORCH_CHECKPOINT.value, _OUTPUT_DIR.value)


if __name__ == '__main__':
  cli.run(main)
