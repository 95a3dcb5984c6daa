"""What every binary shares: quiet logs by default, and one line (no traceback) for the project's errors.

  if __name__ == '__main__':
    cli.run(main)

A user's mistake (input_pipeline.errors.ProjectError and its subclasses, raised by the library) ends the program
with 'Error: <message>' on stderr and exit status 1. INFO lines of other libraries (orbax writes dozens per
checkpoint) are hidden unless --verbosity (-v) is given; the project's own INFO lines and everyone's warnings stay.
"""
import logging as std_logging
import pathlib
import sys
from collections.abc import Callable, Sequence

from absl import app
from absl import flags
from absl import logging

from input_pipeline import errors

_PACKAGES = frozenset({'launch', 'cfi_jax', 'dfc_jax', 'input_pipeline'})
_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _is_project_file(pathname: str) -> bool:
  try:
    relative = pathlib.Path(pathname).resolve().relative_to(_ROOT)
  except ValueError:
    return False
  return relative.parts[0] in _PACKAGES


def _quiet(record: std_logging.LogRecord) -> bool:
  if record.name == 'asyncio' and str(record.msg).startswith('Future exception was never retrieved'):
    return False  # The other reads of a checkpoint step that failed (and was skipped): see _drop_closed_loop_callbacks.
  return record.levelno >= std_logging.WARNING or _is_project_file(record.pathname)


def define_pair_flags() -> tuple[flags.FlagHolder, ...]:
  """(--checkpoint, --step, --ir_dir, --vis_dir, --resize_to, --skip_bad): the flags of the fusion binaries
  (launch.fuse, launch.evaluate_cfi), each defining them at its top."""
  return (
      flags.DEFINE_string('checkpoint', None, 'Orbax checkpoint directory (launch.import_cfi_release/train).'),
      flags.DEFINE_integer('step', None, 'Checkpoint step; the newest readable one by default.'),
      flags.DEFINE_string('ir_dir', None, 'Folder of infrared images.'),
      flags.DEFINE_string('vis_dir', None, 'Folder of visible images.'),
      flags.DEFINE_enum('resize_to', None, ['ir', 'vis'],
                        "Resize the other image to this one's size when sizes differ (default: error)."),
      flags.DEFINE_bool('skip_bad', False,
                        'Folder mode: skip unpaired, unreadable or mismatched files with a warning.'),
  )


def report_skipped(skipped: Sequence[tuple[str, str]]) -> None:
  """One warning listing what a folder run left out, as (name or file, reason)."""
  if skipped:
    logging.warning('Skipped %d pair(s)/file(s):\n  %s', len(skipped),
                    '\n  '.join(f'{name}: {reason}' for name, reason in skipped))


def quiet_logs() -> None:
  """Hides other libraries' INFO/DEBUG lines unless --verbosity was given on the command line."""
  if not flags.FLAGS['verbosity'].present:
    logging.get_absl_handler().addFilter(_quiet)


def _drop_closed_loop_callbacks(unraisable) -> None:
  # When orbax fails to read a truncated checkpoint (which launch.checkpoints then skips), tensorstore still completes
  # the step's other reads and calls back into orbax's event loop after it has closed: each prints an 'Event loop is
  # closed' traceback, dozens per broken step, though nothing is left undone.
  error = unraisable.exc_value
  if not (isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'):
    sys.__unraisablehook__(unraisable)


def run(main: Callable[[Sequence[str]], None]) -> None:
  """app.run(main) with quiet logs and the project's errors printed as one line (exit status 1)."""

  def main_with_error_policy(argv: Sequence[str]) -> None:
    quiet_logs()
    sys.unraisablehook = _drop_closed_loop_callbacks
    try:
      main(argv)
    except errors.ProjectError as e:
      print(f'Error: {e}', file=sys.stderr)
      sys.exit(1)

  try:
    app.run(main_with_error_policy)
  except errors.ProjectError as e:  # Raised while absl parses the flags, before main: a config file's get_config.
    print(f'Error: {e}', file=sys.stderr)
    sys.exit(1)
