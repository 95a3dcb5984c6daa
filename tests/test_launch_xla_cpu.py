"""When a binary adds XLA:CPU's convolution setting to XLA_FLAGS (launch/xla_cpu.py)."""
import pathlib
import subprocess
import sys

from jaxlib import version
import pytest

from launch import xla_cpu


def test_adds_the_setting_after_the_users_flags():
  flags = xla_cpu.xla_flags_with_defaults({'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}, '0.10.2')
  assert flags == f'--xla_force_host_platform_device_count=2 {xla_cpu.SETTING}'
  assert xla_cpu.xla_flags_with_defaults({}, '0.10.0') == xla_cpu.SETTING


@pytest.mark.parametrize('environ, jaxlib_version', [
    ({'XLA_FLAGS': f'{xla_cpu.FLAG}=+individual_dot'}, '0.10.2'),  # The user chose.
    ({xla_cpu.OPT_OUT: '0'}, '0.10.2'),  # Opted out.
    ({}, '0.11.2'),  # A jaxlib where the flag was not checked: an unknown flag would abort XLA.
])
def test_changes_nothing(environ, jaxlib_version):
  assert xla_cpu.xla_flags_with_defaults(environ, jaxlib_version) is None


def test_the_training_binary_starts_with_the_setting_and_others_without():
  show = 'import os; print(os.environ.get("XLA_FLAGS", ""))'
  env = {'PATH': '/usr/bin:/bin', 'LAUNCH_HUGE_PAGES': '0'}
  root = pathlib.Path(__file__).resolve().parents[1]

  def flags_at_start(module):
    # As `python -m MODULE` starts: the package's __init__ runs first (None: a library user's `import launch`).
    argv = f'sys.orig_argv = [sys.executable, "-m", "{module}"]; ' if module else ''
    code = f'import sys; {argv}import launch; {show}'
    return subprocess.run([sys.executable, '-c', code], env=env, cwd=root, capture_output=True, text=True,
                          check=True).stdout.strip()

  assert flags_at_start('launch.train') == (xla_cpu.xla_flags_with_defaults({}, version.__version__) or '')
  assert flags_at_start('launch.fuse') == ''
  assert flags_at_start(None) == ''
