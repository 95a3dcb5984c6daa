"""Flags shared by launch.fuse and launch.evaluate (absl allows each name once per process, and tests import both)."""
from absl import flags

CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'Orbax checkpoint directory (launch.import_isfuse/train).')
STEP = flags.DEFINE_integer('step', None, 'Checkpoint step; the latest by default.')
IR_DIR = flags.DEFINE_string('ir_dir', None, 'Folder of infrared images.')
VIS_DIR = flags.DEFINE_string('vis_dir', None, 'Folder of visible images.')
RESIZE_TO = flags.DEFINE_enum('resize_to', None, ['ir', 'vis'],
                              'Resize the other image to this one\'s size when sizes differ (default: error).')
SKIP_BAD = flags.DEFINE_bool('skip_bad', False, 'Folder mode: skip unreadable or mismatched pairs with a warning.')
