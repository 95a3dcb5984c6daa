"""The PyTorch twin used by the speed benchmarks is the released network (same weights, same outputs)."""
import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def _load_twin_module(repo_root):
  spec = importlib.util.spec_from_file_location("torch_isfuse", repo_root / "benchmarks" / "torch_isfuse.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_twin_reproduces_released_outputs(shared_dir, repo_root):
  twin = _load_twin_module(repo_root)
  reference = shared_dir / "isfuse_reference"
  model = twin.ISFuseTorch()
  model.load_state_dict(torch.load(reference / "best.pth", map_location="cpu", weights_only=True), strict=True)
  model.eval()
  for n in (1, 4):
    vis = torch.from_numpy(np.load(reference / "inputs" / f"{n}_vis_y.npy"))[None, None]
    ir = torch.from_numpy(np.load(reference / "inputs" / f"{n}_ir.npy"))[None, None]
    with torch.no_grad():
      fused = model(vis, ir)[0][0, 0].numpy()
    np.testing.assert_allclose(fused, np.load(reference / "outputs" / f"{n}.npy"), atol=1e-5)


def test_twin_five_pass_loss_trains(repo_root):
  twin = _load_twin_module(repo_root)
  torch.manual_seed(0)
  model = twin.ISFuseTorch(dim=8)
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
  generator = torch.Generator().manual_seed(0)
  vis, ir = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
  losses = []
  for _ in range(15):
    loss = twin.five_pass_loss(model, vis, ir, generator)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
  assert np.isfinite(losses).all()
  assert losses[-1] < losses[0]
