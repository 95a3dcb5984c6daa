"""PyTorch twin of the released ISFuse network and its five-pass training step, written from the spec.

Used only by the speed benchmarks, so that JAX is compared against the very network that `best.pth` holds
(tests/test_torch_twin.py checks it reproduces the reference outputs). Module names follow the release so the
state dict loads with strict=True, including the three modules the release defines but never calls.
"""
import torch
from torch import nn
from torch.nn import functional as F


def _conv_bn_lrelu(cin: int, cout: int, kernel: int = 3) -> list[nn.Module]:
  return [nn.Conv2d(cin, cout, kernel, padding=kernel // 2), nn.BatchNorm2d(cout), nn.LeakyReLU(0.01)]


def _double_conv(cin: int, cout: int) -> nn.Sequential:
  return nn.Sequential(*_conv_bn_lrelu(cin, cout), *_conv_bn_lrelu(cout, cout))


class Encoder(nn.Module):

  def __init__(self, dim: int):
    super().__init__()
    self.module1 = _double_conv(1, dim)
    self.module2 = _double_conv(dim, dim)
    self.module3 = _double_conv(dim, dim)

  def forward(self, x):
    f1 = self.module1(x)
    f2 = self.module2(F.max_pool2d(f1, 2))
    f3 = self.module3(F.max_pool2d(f2, 2))
    return f1, f2, f3


class CFI(nn.Module):

  def __init__(self, dim: int, reduce: int = 8):
    super().__init__()
    self.reduce = reduce
    for name in ("q_v", "k_v", "v_v", "q_i", "k_i", "v_i"):
      setattr(self, name, nn.Conv2d(dim, dim, 1))
    self.gate = nn.Sequential(*_conv_bn_lrelu(dim, dim // 2), nn.Conv2d(dim // 2, 1, 1), nn.Sigmoid())
    self.refine = nn.Sequential(*_conv_bn_lrelu(dim, dim))

  def _attend(self, q, k, v):
    n, c, h, w = q.shape
    k = F.adaptive_avg_pool2d(k, self.reduce).flatten(2)  # [n, c, r*r]
    v = F.adaptive_avg_pool2d(v, self.reduce).flatten(2)
    q = q.flatten(2).transpose(1, 2)  # [n, hw, c]
    attn = torch.softmax(q @ k / c**0.5, dim=-1)  # [n, hw, r*r]
    return (attn @ v.transpose(1, 2)).transpose(1, 2).reshape(n, c, h, w)

  def forward(self, f_vi, f_ir):
    complementary = (self._attend(self.q_v(f_vi), self.k_i(f_ir), self.v_i(f_ir)) +
                     self._attend(self.q_i(f_ir), self.k_v(f_vi), self.v_v(f_vi)))
    gate = self.gate(complementary)
    mixed = gate * complementary + (1 - gate) * (f_vi + f_ir)
    return self.refine(mixed), gate


class ISFuseTorch(nn.Module):
  """model(vis, ir) -> (fused, (x3, x4, x5), {'g3','g4','g5'}), NCHW, as the release."""

  def __init__(self, dim: int = 32):
    super().__init__()
    self.encoder_ir = Encoder(dim)
    self.encoder_vis = Encoder(dim)
    # Defined in the release and present in best.pth, never called in forward.
    self.adjust_channels3 = nn.Sequential(*_conv_bn_lrelu(2 * dim, dim, kernel=1))
    self.module4 = _double_conv(dim, dim)
    self.module5 = _double_conv(dim, dim)
    self.adjust_channels4 = _double_conv(dim, dim)
    self.adjust_channels5 = _double_conv(dim, dim)
    self.final_decoder = nn.Sequential(nn.Conv2d(dim, 1, 3, padding=1))
    self.cfi3, self.cfi4, self.cfi5 = CFI(dim), CFI(dim), CFI(dim)

  def forward(self, vis, ir):
    v1, v2, v3 = self.encoder_vis(vis)
    i1, i2, i3 = self.encoder_ir(ir)
    x3, g3 = self.cfi3(v3, i3)
    c4, g4 = self.cfi4(v2, i2)
    x4 = self.adjust_channels4(F.interpolate(x3, size=c4.shape[-2:], mode="bilinear", align_corners=False) + c4)
    c5, g5 = self.cfi5(v1, i1)
    x5 = self.adjust_channels5(F.interpolate(x4, size=c5.shape[-2:], mode="bilinear", align_corners=False) + c5)
    return torch.sigmoid(self.final_decoder(x5)), (x3, x4, x5), {"g3": g3, "g4": g4, "g5": g5}


_LAPLACIAN_8 = torch.tensor([[1.0, 1.0, 1.0], [1.0, -8.0, 1.0], [1.0, 1.0, 1.0]]).view(1, 1, 3, 3)


def _grad_magnitude(x):
  return F.conv2d(x, _LAPLACIAN_8.to(x), padding=1).abs()


def _mean_gate(gates, size):
  return sum(F.interpolate(g, size=size, mode="bilinear", align_corners=False) for g in gates.values()) / len(gates)


def _hole_mask(batch: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
  """The release's mask draw: 1-6 holes per image, 16x16 squares (p=0.7) or radius-8 disks."""
  mask = torch.ones(batch, 1, height, width)
  yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
  for b in range(batch):
    for _ in range(int(torch.randint(1, 7, (1,), generator=generator))):
      if torch.rand(1, generator=generator) < 0.7:
        top = int(torch.randint(0, height - 16 + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - 16 + 1, (1,), generator=generator))
        mask[b, :, top:top + 16, left:left + 16] = 0
      else:
        cy = int(torch.randint(8, height - 8 + 1, (1,), generator=generator))
        cx = int(torch.randint(8, width - 8 + 1, (1,), generator=generator))
        mask[b, :, (yy - cy)**2 + (xx - cx)**2 <= 64] = 0
  return mask


def five_pass_loss(model: ISFuseTorch, vis, ir, generator: torch.Generator, alpha=0.1, beta=0.05, eta=0.3):
  """The release's training loss: five sequential train-mode passes, L_f + alpha L_inv + beta L_nec."""
  n, _, h, w = vis.shape
  fused, _, _ = model(vis, ir)
  m_vi, m_ir = _hole_mask(n, h, w, generator), _hole_mask(n, h, w, generator)
  both = (m_vi == 0) & (m_ir == 0)
  coin = torch.rand(m_vi.shape, generator=generator).round().bool()
  m_vi = torch.where(both & coin, torch.ones_like(m_vi), m_vi)
  m_ir = torch.where(both & ~coin, torch.ones_like(m_ir), m_ir)
  fused_comp, _, gates_comp = model(vis * m_vi, ir * m_ir)
  m_r = _hole_mask(n, h, w, generator)
  fused_rand, _, gates_rand = model(vis * m_r, ir * m_r)
  fused_ir_only, _, _ = model(torch.zeros_like(vis), ir)
  fused_vis_only, _, _ = model(vis, torch.zeros_like(ir))

  loss_f = (F.l1_loss(fused, vis) + F.l1_loss(fused, ir) +
            F.l1_loss(_grad_magnitude(fused), torch.maximum(_grad_magnitude(vis), _grad_magnitude(ir))))
  loss_inv = 0.0
  for fused_d, gates_d in ((fused_comp, gates_comp), (fused_rand, gates_rand)):
    gate = _mean_gate(gates_d, (h, w))
    p = gate.clamp(1e-6, 1 - 1e-6)
    entropy = -(p * p.log() + (1 - p) * (1 - p).log()).mean()
    area = (gate.mean(dim=(1, 2, 3)) - eta).abs().mean()
    loss_inv = loss_inv + 0.5 * (((fused_d - fused).abs() * gate).mean() + area - entropy)
  loss_nec = F.l1_loss(fused, fused_ir_only) + F.l1_loss(fused, fused_vis_only)
  return loss_f + alpha * loss_inv + beta * loss_nec
