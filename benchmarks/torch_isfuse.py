"""PyTorch twin of the released ISFuse network and its five-pass training step, written from the spec.

Used only by the speed benchmarks, so that JAX is compared against the very network that `best.pth` holds
(tests/test_benchmarks_torch_isfuse.py checks it reproduces the reference outputs). Module names follow the release so
the state dict loads with strict=True, including the three modules the release defines but never calls.
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
  """The release's CFI; use_cfi=False is the project's no_cfi ablation (no attention or gate: G = 1, the refine
  sees f_vi + f_ir), as cfi_jax.model.CFI."""

  def __init__(self, dim: int, reduce: int = 8, use_cfi: bool = True):
    super().__init__()
    self.reduce, self.use_cfi = reduce, use_cfi
    if use_cfi:
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
    local = f_vi + f_ir
    if not self.use_cfi:
      return self.refine(local), torch.ones_like(local[:, :1])
    complementary = (self._attend(self.q_v(f_vi), self.k_i(f_ir), self.v_i(f_ir)) +
                     self._attend(self.q_i(f_ir), self.k_v(f_vi), self.v_v(f_vi)))
    gate = self.gate(complementary)
    mixed = gate * complementary + (1 - gate) * local
    return self.refine(mixed), gate


class ISFuseTorch(nn.Module):
  """model(vis, ir) -> (fused, (x3, x4, x5), {'g3','g4','g5'}), NCHW, as the release."""

  def __init__(self, dim: int = 32, use_cfi: bool = True):
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
    self.cfi3, self.cfi4, self.cfi5 = (CFI(dim, use_cfi=use_cfi) for _ in range(3))

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


def release_views(vis, ir, generator: torch.Generator) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
  """The release's intervened inputs {view: (vis, ir)}: complementary holes (overlaps split by a per-pixel coin),
  shared random holes, and the two modality dropouts."""
  n, _, h, w = vis.shape
  m_vi, m_ir = _hole_mask(n, h, w, generator), _hole_mask(n, h, w, generator)
  both = (m_vi == 0) & (m_ir == 0)
  coin = torch.rand(m_vi.shape, generator=generator).round().bool()
  m_vi = torch.where(both & coin, torch.ones_like(m_vi), m_vi)
  m_ir = torch.where(both & ~coin, torch.ones_like(m_ir), m_ir)
  m_r = _hole_mask(n, h, w, generator)
  return {"complementary": (vis * m_vi, ir * m_ir), "random": (vis * m_r, ir * m_r),
          "vis_dropped": (torch.zeros_like(vis), ir), "ir_dropped": (vis, torch.zeros_like(ir))}


def five_pass_terms(model: ISFuseTorch, vis, ir, views: dict[str, tuple[torch.Tensor, torch.Tensor]], *,
                    use_inv: bool = True, use_nec: bool = True, alpha=0.1, beta=0.05, eta=0.3
                    ) -> dict[str, torch.Tensor]:
  """The release's Train.py loss and its terms: sequential train-mode passes (clean first, then `views` in order),
  L = L_f + alpha L_inv + beta L_nec.

  CausalInvarianceLoss averages C_d + A_d - E_d over the masking views present ('complementary', 'random'; the
  release always runs both); L_nec needs both dropout views. The ablations leave views or terms out; a view that
  runs without its term still updates the BatchNorm running statistics, as in the release.
  """
  _, _, h, w = vis.shape
  fused, _, _ = model(vis, ir)
  outputs = {name: model(*inputs) for name, inputs in views.items()}
  terms = {"loss_f_l1_vis": F.l1_loss(fused, vis), "loss_f_l1_ir": F.l1_loss(fused, ir),
           "loss_f_grad": F.l1_loss(_grad_magnitude(fused),
                                    torch.maximum(_grad_magnitude(vis), _grad_magnitude(ir)))}
  terms["loss_f"] = terms["loss_f_l1_vis"] + terms["loss_f_l1_ir"] + terms["loss_f_grad"]
  loss = terms["loss_f"]
  masked = [outputs[name] for name in ("complementary", "random") if name in outputs]
  if masked:
    parts = {"consistency": 0.0, "area": 0.0, "entropy": 0.0}
    for fused_d, _, gates_d in masked:
      gate = _mean_gate(gates_d, (h, w))
      p = gate.clamp(1e-6, 1 - 1e-6)
      parts["consistency"] = parts["consistency"] + ((fused_d - fused).abs() * gate).mean() / len(masked)
      parts["area"] = parts["area"] + (gate.mean(dim=(1, 2, 3)) - eta).abs().mean() / len(masked)
      parts["entropy"] = parts["entropy"] - (p * p.log() + (1 - p) * (1 - p).log()).mean() / len(masked)
    terms.update({f"loss_inv_{k}": v for k, v in parts.items()})
    terms["loss_inv"] = parts["consistency"] + parts["area"] - parts["entropy"]
    if use_inv:
      loss = loss + alpha * terms["loss_inv"]
  if "vis_dropped" in outputs:
    terms["loss_nec"] = F.l1_loss(fused, outputs["vis_dropped"][0]) + F.l1_loss(fused, outputs["ir_dropped"][0])
    if use_nec:
      loss = loss + beta * terms["loss_nec"]
  terms["loss"] = loss
  return terms


def five_pass_loss(model: ISFuseTorch, vis, ir, generator: torch.Generator, alpha=0.1, beta=0.05, eta=0.3):
  """The release's training loss: five sequential train-mode passes, L_f + alpha L_inv + beta L_nec."""
  return five_pass_terms(model, vis, ir, release_views(vis, ir, generator), alpha=alpha, beta=beta, eta=eta)["loss"]
