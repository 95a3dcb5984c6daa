"""Acceptance: the imported release weights reproduce the authors' PyTorch outputs (spec isfuse_cfi.md §1)."""
import numpy as np
import pytest

from cfi_jax import inference
from input_pipeline import images
from launch import checkpoints
from launch import release_weights

PAIRS = range(1, 6)


@pytest.fixture(scope='module')
def imported(shared_dir, tmp_path_factory):
  """(model, variables) restored from the orbax checkpoint that the import binary writes from best.pth."""
  pytest.importorskip('torch')
  output_dir = tmp_path_factory.mktemp('imported') / 'ckpt'
  release_weights.import_checkpoint(str(shared_dir / 'isfuse_reference' / 'best.pth'), str(output_dir))
  variables, config = checkpoints.restore_model_variables(output_dir)
  assert config['model'] == 'cfi'
  assert config['source']['ignored_modules'] == ['adjust_channels3', 'module4', 'module5']
  return inference.model_from_config(config['model_config']), variables


def test_reference_outputs(imported, shared_dir):
  model, variables = imported
  ref = shared_dir / 'isfuse_reference'
  for n in PAIRS:
    fused = inference.fuse_luma(model, variables, np.load(ref / 'inputs' / f'{n}_vis_y.npy'),
                                np.load(ref / 'inputs' / f'{n}_ir.npy'))
    expected = np.load(ref / 'outputs' / f'{n}.npy')
    assert fused.shape == expected.shape
    # Measured on CPU: at most 1.73e-6 over these pairs (float32 reassociation); 5e-6 leaves a small margin.
    assert np.abs(fused - expected).max() <= 5e-6, f'pair {n}'


def test_end_to_end_from_image_files(imported, shared_dir):
  model, variables = imported
  data = shared_dir / 'data' / 'ivif' / 'roadscene' / 'test'
  for n in PAIRS:
    vis_y, _ = images.load_vis(data / 'vi' / f'{n}.jpg')
    fused = inference.fuse_luma(model, variables, vis_y, images.load_ir(data / 'ir' / f'{n}.jpg'))
    expected = np.load(shared_dir / 'isfuse_reference' / 'outputs' / f'{n}.npy')
    assert np.abs(fused - expected).mean() <= 2e-3, f'pair {n}'
