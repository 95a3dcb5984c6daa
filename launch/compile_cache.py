"""JAX's persistent compilation cache for the binaries, so a rerun (or the next checkpoint) compiles nothing.

The cache lives in $XDG_CACHE_HOME/cfi_dfc_jax/jax_cache (~/.cache/... by default). CFI_DFC_JAX_CACHE moves it
(a directory) or turns it off ('off'). Cached programs are keyed by JAX/XLA version, backend and the program, so a
stale entry is never used.
"""
import os
import pathlib

import jax

ENV_VAR = 'CFI_DFC_JAX_CACHE'
_OFF = ('off', '0', 'false', 'none')


def user_cache_root() -> pathlib.Path:
  """The user's cache folder: $XDG_CACHE_HOME, else ~/.cache."""
  return pathlib.Path(os.environ.get('XDG_CACHE_HOME') or pathlib.Path.home() / '.cache')


def cache_dir() -> pathlib.Path | None:
  """The cache directory the environment asks for, or None when CFI_DFC_JAX_CACHE turns it off."""
  setting = os.environ.get(ENV_VAR, '').strip()
  if setting.lower() in _OFF:
    return None
  if setting:
    return pathlib.Path(setting).expanduser()
  return user_cache_root() / 'cfi_dfc_jax' / 'jax_cache'


def enable() -> pathlib.Path | None:
  """Points JAX's persistent compilation cache at cache_dir() (nothing when off); returns the directory used."""
  directory = cache_dir()
  if directory is None:
    return None
  jax.config.update('jax_compilation_cache_dir', str(directory))
  # JAX caches only programs that took >= 1 s to compile by default; on CPU most of ours take less, and every
  # program of a folder run counts, so cache them all.
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  return directory
