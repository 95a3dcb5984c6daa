"""The binaries' persistent compilation cache: where it goes, that it stores programs, and that it can be off."""
import pathlib
import subprocess
import sys

from launch import compile_cache

_COMPILE_ONE = ('import jax; from launch import compile_cache; print(compile_cache.enable()); '
                'jax.jit(lambda x: x * 2 + 1)(1.0).block_until_ready()')


def _run(env_value: str, tmp_path: pathlib.Path) -> subprocess.CompletedProcess:
  env = {'PATH': '/usr/bin:/bin', 'HOME': str(tmp_path / 'home'), compile_cache.ENV_VAR: env_value,
         'JAX_PLATFORMS': 'cpu'}
  return subprocess.run([sys.executable, '-c', _COMPILE_ONE], env=env, capture_output=True, text=True, check=True,
                        cwd=pathlib.Path(__file__).resolve().parents[1])


def test_default_directory_honours_xdg_cache_home(monkeypatch, tmp_path):
  monkeypatch.delenv(compile_cache.ENV_VAR, raising=False)
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
  assert compile_cache.cache_dir() == tmp_path / 'cfi_dfc_jax' / 'jax_cache'
  monkeypatch.setenv(compile_cache.ENV_VAR, str(tmp_path / 'elsewhere'))
  assert compile_cache.cache_dir() == tmp_path / 'elsewhere'


def test_cache_stores_programs_and_can_be_turned_off(tmp_path):
  cache = tmp_path / 'cache'
  assert _run(str(cache), tmp_path).stdout.strip() == str(cache)
  assert any(cache.iterdir())  # The tiny program was cached despite compiling in well under a second.
  result = _run('off', tmp_path)
  assert result.stdout.strip() == 'None'
  assert not (tmp_path / 'home' / '.cache').exists()
