"""Runs the Colab notebooks top to bottom in a fresh Jupyter kernel, with their smoke variant, as CI's user would.

The kernel is a separate process: it does not see conftest's 8 fake devices, so the tests give it 2 CPU devices
through the environment (the notebooks themselves never set a device count) to exercise the sharded path.
"""
import base64
import importlib.util
import io
import os
import pathlib
import re

import nbclient
import nbformat
import numpy as np
from PIL import Image
import pytest

from cfi_jax import metrics
from input_pipeline import grids
from launch.configs import cfi as cfi_configs
from launch.configs import dfc as dfc_configs

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO_ROOT / 'notebooks'
KERNEL_DEVICES = 2
TIMEOUT_S = 600  # Per cell; the smoke runs take seconds to a minute on a 2-core CPU.


def _execute(name: str, workdir: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
             best_pth: pathlib.Path | None = None) -> nbformat.NotebookNode:
  """Executes notebooks/<name>.ipynb in a new kernel (cwd = workdir) and returns it with its outputs."""
  if importlib.util.find_spec('ipykernel') is None:
    pytest.fail('executing notebooks needs a Jupyter kernel: pip install ipykernel (part of the test extra)')
  # The kernel inherits this process's environment: the notebook reads its parameters from it.
  monkeypatch.setenv('CFI_NOTEBOOK_VARIANT', 'smoke')
  monkeypatch.setenv('CFI_NOTEBOOK_WORKDIR', str(workdir / 'run'))
  if best_pth is None:
    monkeypatch.delenv('CFI_BEST_PTH', raising=False)
  else:
    monkeypatch.setenv('CFI_BEST_PTH', str(best_pth))
  monkeypatch.delenv('CFI_REPO_URL', raising=False)
  monkeypatch.setenv('JAX_NUM_CPU_DEVICES', str(KERNEL_DEVICES))
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  # The checkout must be importable from the kernel even when it is not pip-installed (the install cell then
  # reports that it uses it, and never reaches for REPO_URL).
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get('PYTHONPATH')])))
  notebook = nbformat.read(NOTEBOOKS / f'{name}.ipynb', as_version=4)
  client = nbclient.NotebookClient(notebook, timeout=TIMEOUT_S, kernel_name='python3',
                                   resources={'metadata': {'path': str(workdir)}})
  client.execute()
  return notebook


def _outputs(notebook: nbformat.NotebookNode, mime: str) -> list:
  return [out['data'][mime] for cell in notebook.cells if cell.cell_type == 'code'
          for out in cell.outputs if mime in out.get('data', {})]


def _stream_text(notebook: nbformat.NotebookNode) -> str:
  return ''.join(out.get('text', '') for cell in notebook.cells if cell.cell_type == 'code'
                 for out in cell.outputs if out.get('output_type') == 'stream')


def _png(data: str) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))


def _table(markdown: str, first_column: str) -> list[list[str]]:
  """Rows (header first, rule dropped) of the Markdown table whose header starts with `first_column`."""
  lines = [line for line in markdown.splitlines() if line.startswith('|')]
  assert lines and lines[0].startswith(f'| {first_column} |'), markdown
  return [[c.strip() for c in line.strip('|').split('|')] for line in lines if not line.startswith('|---')]


def _find_table(notebook: nbformat.NotebookNode, first_column: str) -> list[list[str]]:
  tables = [md for md in _outputs(notebook, 'text/markdown') if f'| {first_column} |' in md]
  assert len(tables) == 1, f'expected one table headed {first_column!r}, got {len(tables)}'
  return _table(tables[0], first_column)


def _check_training_log(notebook: nbformat.NotebookNode, config) -> None:
  log = _find_table(notebook, 'step')
  # The loop logs every log_every steps and at the last step.
  expected_steps = sorted({*range(config.log_every, config.num_steps + 1, config.log_every), config.num_steps})
  assert [int(row[0]) for row in log[1:]] == expected_steps
  assert all(np.isfinite(float(row[1])) for row in log[1:])


@pytest.mark.parametrize('name', ['cfi_colab', 'dfc_colab'])
def test_notebooks_are_saved_clean(name):
  """Committed without outputs, and free of machine-specific settings that would break them on Colab."""
  notebook = nbformat.read(NOTEBOOKS / f'{name}.ipynb', as_version=4)
  nbformat.validate(notebook)
  for cell in notebook.cells:
    if cell.cell_type == 'code':
      assert not cell.outputs and cell.execution_count is None, f'{name}: outputs saved in cell {cell.id}'
  source = '\n'.join(cell.source for cell in notebook.cells)
  for forbidden in ('jax_num_cpu_devices', 'xla_force_host_platform_device_count', str(REPO_ROOT), '/tmp/'):
    assert forbidden not in source, f'{name} contains {forbidden!r}'


def _check_cfi_report(notebook: nbformat.NotebookNode, method: str, workdir: pathlib.Path) -> list[list[str]]:
  """Checks the metrics table and the IR | VIS | fused grid of an executed CFI notebook; returns the table."""
  data = cfi_configs.get_config('smoke').data
  table = _find_table(notebook, 'method')
  assert table[0][1:] == list(metrics.METRIC_NAMES['tang2023'])
  assert [row[0] for row in table[1:]] == [method, 'average', 'maximum', 'ir_alone', 'visible_alone']
  # Entropy is defined for every image: a number (mean ± std), never 'n/a'.
  assert all(re.fullmatch(r'-?\d+\.\d+ ± \d+\.\d+', row[1]) for row in table[1:]), table

  (grid,) = _outputs(notebook, 'image/png')
  size, pairs = data.synthetic_size, min(4, data.num_eval)  # The notebook shows up to 4 pairs.
  gap = grids.GAP
  assert _png(grid).shape == (pairs * size + (pairs - 1) * gap, 3 * size + 2 * gap, 3)
  assert len(list((workdir / 'run' / 'fused').glob('*.png'))) == data.num_eval
  return table


def test_cfi_notebook_trains_evaluates_and_shows(tmp_path, monkeypatch):
  notebook = _execute('cfi_colab', tmp_path, monkeypatch)
  assert f'{KERNEL_DEVICES} x cpu' in _stream_text(notebook).lower()
  _check_training_log(notebook, cfi_configs.get_config('smoke'))
  _check_cfi_report(notebook, 'ISFuse (smoke)', tmp_path)


def test_cfi_notebook_imports_released_weights(tmp_path, monkeypatch, shared_dir):
  pytest.importorskip('torch', reason='importing best.pth needs the optional torch extra')
  notebook = _execute('cfi_colab', tmp_path, monkeypatch, best_pth=shared_dir / 'isfuse_reference' / 'best.pth')
  assert "'features': 32" in _stream_text(notebook)  # The release's width, read from its weights.
  assert not (tmp_path / 'run' / 'checkpoints').exists()  # Nothing was trained.
  table = _check_cfi_report(notebook, 'ISFuse (released)', tmp_path)
  # A trained fusion network keeps the contrast and information that plain averaging of the sources washes out.
  released, average = ({name: float(cell.split()[0]) for name, cell in zip(table[0][1:], row[1:])}
                       for row in table[1:3])
  assert released['SD'] > average['SD'] and released['EN'] > average['EN'], table


def test_dfc_notebook_trains_evaluates_and_shows(tmp_path, monkeypatch):
  notebook = _execute('dfc_colab', tmp_path, monkeypatch)
  config = dfc_configs.get_config('smoke')
  _check_training_log(notebook, config)

  table = _find_table(notebook, 'split')
  assert table[0][1:] == ['output', 'ssim', 'psnr', 'lpips', 'iou', 'fg_l1', 'keypoint_error']
  rows = ['model', 'copy_target', 'background', 'blurred_target']
  assert [row[:2] for row in table[1:]] == [[split, row] for split in config.eval.splits for row in rows]
  assert all(np.isfinite(float(v)) for row in table[1:] for v in row[2:])

  grids = _outputs(notebook, 'image/png')
  assert len(grids) == len(config.eval.splits)
  size, rows = config.data.image_size, min(config.eval.grid_rows, config.eval.num_samples)
  for grid in grids:  # Columns: source | target | output | ground truth.
    assert _png(grid).shape == (rows * size, 4 * size, 3)
