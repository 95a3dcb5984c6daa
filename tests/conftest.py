"""Test setup: 8 fake CPU devices, absl flags parsed, and the shared data folder."""
import os
import pathlib
import tempfile

import jax
from absl import flags
import pytest

# Must happen before any JAX computation creates the CPU backend. The tests' device counts and tolerances are the
# CPU's, so they stay on it even on a host with an accelerator (or libtpu installed).
jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_num_cpu_devices", 8)
# grain workers and absl-based modules read flags; pytest never parses them.
flags.FLAGS.mark_as_parsed()
# The binaries turn on the persistent compilation cache; tests that run them must not write to the user's cache.
os.environ.setdefault("CFI_DFC_JAX_CACHE", "off")
# Likewise the fixed joint regressor that DFC evaluation caches (the notebooks' kernels inherit this).
os.environ.setdefault("DFC_REGRESSOR_CACHE", tempfile.mkdtemp(prefix="dfc_regressor_cache_"))

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DIR = pathlib.Path(os.environ.get("CFI_SHARED_DIR", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
  """Path of ../shared (real data, released weights, metric fixtures); skips the test when absent."""
  if not (SHARED_DIR / "README.md").exists():
    pytest.skip(f"shared data folder not found at {SHARED_DIR} (set CFI_SHARED_DIR to point at it)")
  return SHARED_DIR


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
  return REPO_ROOT
