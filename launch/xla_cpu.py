"""XLA:CPU setting of the training binary: convolutions on XLA's own kernels instead of YNNPACK's.

jaxlib 0.10 hands every convolution to YNNPACK (`__ynn_fusion` in the compiled HLO), whose weight gradients are slow.
On the 2-core AMD EPYC of session 31, one core, with XLA's own (Eigen) kernels: a weight gradient of the DFC demo's
pose encoder 2.7-3x faster, the demo's pose-pretraining step 0.79 -> 0.54 s and its whole step 1.97 -> 1.45 s
(`benchmarks/dfc_demo_time.py`; README), a CFI train step (batch 4, 128x128, five views) 10.9 -> 8.4 s; but the
CFI's 480x640 forward pass 6% slower (1368 -> 1451 ms). So `python -m launch.train` alone starts with
`--xla_cpu_experimental_ynn_fusion_type=-individual_convolution` in XLA_FLAGS, set before jax reads them; only on
jaxlib versions where the flag was checked (an unknown flag in XLA_FLAGS aborts XLA), only when the user's XLA_FLAGS
do not set it already, and not with LAUNCH_XLA_CPU_DEFAULTS=0. The flag concerns XLA:CPU alone; GPU and TPU programs
are compiled as before.
"""
import os
import sys
from collections.abc import Mapping

from launch import huge_pages

FLAG = '--xla_cpu_experimental_ynn_fusion_type'
SETTING = f'{FLAG}=-individual_convolution'
OPT_OUT = 'LAUNCH_XLA_CPU_DEFAULTS'
# jaxlib releases whose XLA knows the flag (a jaxlib without it would abort on it).
CHECKED_JAXLIB = ('0.10.',)
# The binaries that run backward convolutions (the inference ones were measured slower with the setting).
BINARIES = ('launch.train',)


def xla_flags_with_defaults(environ: Mapping[str, str], jaxlib_version: str) -> str | None:
  """XLA_FLAGS with SETTING added, or None where nothing should change (see the module docstring)."""
  flags = environ.get('XLA_FLAGS', '')
  if environ.get(OPT_OUT) == '0' or FLAG in flags or not jaxlib_version.startswith(CHECKED_JAXLIB):
    return None
  return f'{flags} {SETTING}' if flags else SETTING


def set_xla_flags() -> None:
  """Adds SETTING to this process's XLA_FLAGS where xla_flags_with_defaults says so; call before jax starts XLA (as
  launch.train does, and the benchmarks that time what it runs)."""
  from jaxlib import version  # pylint: disable=g-import-not-at-top  (light: no XLA yet)
  flags = xla_flags_with_defaults(os.environ, version.__version__)
  if flags is not None:
    os.environ['XLA_FLAGS'] = flags


def apply_to_binary() -> None:
  """set_xla_flags when the process runs one of BINARIES and has not imported jax yet; otherwise returns."""
  if huge_pages.launched_module(getattr(sys, 'orig_argv', [])) in BINARIES and 'jax' not in sys.modules:
    set_xla_flags()
