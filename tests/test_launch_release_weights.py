"""Importing the authors' release (launch.release_weights): the imported weights reproduce the authors' PyTorch
outputs (acceptance, spec isfuse_cfi.md §1), and the importer names key and shape mismatches and unused modules."""
import numpy as np
import pytest

from cfi_jax import inference
from cfi_jax import torch_import
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


@pytest.fixture(scope='module')
def release_state_dict(shared_dir):
  pytest.importorskip('torch')
  return release_weights.load_torch_state_dict(str(shared_dir / 'isfuse_reference' / 'best.pth'))


def test_importer_names_key_and_shape_mismatches(release_state_dict, tmp_path):
  torch = pytest.importorskip('torch')
  state = {k: torch.from_numpy(v) for k, v in release_state_dict.items()}
  state['cfi3.extra.weight'] = torch.zeros(3)
  state['cfi4.q_v.weight'] = torch.zeros(32, 16, 1, 1)
  del state['final_decoder.0.bias']
  torch.save(state, tmp_path / 'bad.pth')
  with pytest.raises(release_weights.WeightFileError) as error:
    release_weights.import_checkpoint(str(tmp_path / 'bad.pth'), str(tmp_path / 'out'))
  message = str(error.value)
  assert 'bad.pth' in message and "'cfi3.extra.weight'" in message
  assert "'cfi4.q_v.weight': checkpoint (32, 16, 1, 1)" in message and '(1, 1, 32, 32)' in message
  assert 'final/bias' in message
  assert not (tmp_path / 'out').exists()


def test_importer_reports_unused_modules(release_state_dict):
  _, config, ignored = release_weights.import_state_dict(release_state_dict)
  assert ignored == list(torch_import.UNUSED_MODULES)
  assert config['model_config']['features'] == 32
