"""ISFuse training losses (spec isfuse_cfi.md §3): L = L_f + alpha * L_inv + beta * L_nec, and the ablation presets.

Defaults follow the authors' release (what best.pth was trained with); the paper's readings of the entropy sign and
of L_nec are options. Every L1 is a mean absolute error (PyTorch `l1_loss`, mean reduction). No stop-gradients:
the release has none, so gradients reach the clean pass through every term.
"""
import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from cfi_jax import interventions
from cfi_jax import ops

INTENSITY_TERMS = ('release', 'max')
GRADIENT_TERMS = ('release', 'of_max')
# The release clamps gates into [eps, 1 - eps] before the binary entropy.
_ENTROPY_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Loss weights, readings and which interventions run (static: hashable, so it can be a jit static argument).

  Attributes:
    alpha: weight of L_inv.
    beta: weight of L_nec.
    lambda_grad: weight of the Laplacian-gradient term of L_f.
    intensity: L_f's intensity term. 'release': L1(F, vis) + L1(F, ir) (the release and the paper), which is flat for
      any F between the two sources, so it does not say which one a pixel should follow; 'max': L1(F, max(vis, ir))
      (the intensity loss of SeAFusion, Tang et al. 2022), which keeps the brighter source: warm targets at their IR
      brightness, lit detail at its visible one.
    gradient: L_f's gradient term. 'release': L1(|Lap F|, max(|Lap vis|, |Lap ir|)) (the release and the paper),
      which asks for the larger source's Laplacian magnitude with either sign, so its minimiser carries texture
      correlated with neither source (benchmarks/cfi_lf_optimum.py); 'of_max': L1(Lap F, Lap max(vis, ir)), the
      Laplacian of the 'max' intensity term's target, so both terms share their minimiser (needs intensity='max').
    eta: target mean gate opening of the area term.
    entropy_sign: 'release' subtracts the gate entropy (pushes gates toward 0.5, as the release does); 'paper' adds
      it (pushes gates toward binary decisions, as the paper's prose says).
    nec_mode: 'release' minimises L1(F, F_single) (as the release does); 'hinge' maximises it in the bounded form
      max(0, nec_margin - L1) per single-modality output (the paper's "maximise the difference").
    nec_margin: the hinge margin m (only for nec_mode='hinge'; a free choice, not from the paper).
    use_inv: add L_inv to the loss (needs complementary or random views).
    use_nec: add L_nec to the loss (needs the dropout views).
    complementary, random, dropout: which interventions run. A strategy can run without its loss term, so its
      passes still update the BatchNorm running statistics as in the release.
    holes: how the hole masks are drawn.
  """
  alpha: float = 0.1
  beta: float = 0.05
  lambda_grad: float = 1.0
  intensity: str = 'release'
  gradient: str = 'release'
  eta: float = 0.3
  entropy_sign: str = 'release'
  nec_mode: str = 'release'
  nec_margin: float = 0.1
  use_inv: bool = True
  use_nec: bool = True
  complementary: bool = True
  random: bool = True
  dropout: bool = True
  holes: interventions.HoleConfig = interventions.HoleConfig()

  def __post_init__(self):
    if self.entropy_sign not in ('release', 'paper'):
      raise ValueError(f"LossConfig.entropy_sign must be 'release' or 'paper', got {self.entropy_sign!r}")
    if self.intensity not in INTENSITY_TERMS:
      raise ValueError(f"LossConfig.intensity must be one of {INTENSITY_TERMS}, got {self.intensity!r}")
    if self.gradient not in GRADIENT_TERMS:
      raise ValueError(f"LossConfig.gradient must be one of {GRADIENT_TERMS}, got {self.gradient!r}")
    if self.gradient == 'of_max' and self.intensity != 'max':
      raise ValueError("LossConfig.gradient='of_max' is the Laplacian of the 'max' intensity term's target; set "
                       "intensity='max' too")
    if self.nec_mode not in ('release', 'hinge'):
      raise ValueError(f"LossConfig.nec_mode must be 'release' or 'hinge', got {self.nec_mode!r}")
    if self.use_inv and not (self.complementary or self.random):
      raise ValueError('LossConfig.use_inv needs complementary or random views; enable one or set use_inv=False')
    if self.use_nec and not self.dropout:
      raise ValueError('LossConfig.use_nec needs the dropout views; set dropout=True or use_nec=False')

  @property
  def view_names(self) -> tuple[str, ...]:
    """The stacked views this config runs, in stack order (clean first)."""
    return interventions.view_names(complementary=self.complementary, random=self.random, dropout=self.dropout)


_NO_INTERVENTIONS = dict(use_inv=False, use_nec=False, complementary=False, random=False, dropout=False)

# Loss-side ablations; 'no_cfi' is the model's use_cfi=False with the full loss.
ABLATIONS: dict[str, dict[str, Any]] = {
    'full': {},
    'no_inv': dict(use_inv=False),
    'no_nec': dict(use_nec=False),
    'no_inv_no_nec': dict(use_inv=False, use_nec=False),
    'lf_only': _NO_INTERVENTIONS,
    'comp_only': dict(_NO_INTERVENTIONS, use_inv=True, complementary=True),
    'rand_only': dict(_NO_INTERVENTIONS, use_inv=True, random=True),
    'dropout_only': dict(_NO_INTERVENTIONS, use_nec=True, dropout=True),
    'no_cfi': {},
}


def ablation(name: str, **overrides: Any) -> tuple[LossConfig, dict[str, Any]]:
  """(LossConfig, ISFuse kwargs) of a named ablation; `overrides` replace LossConfig fields (e.g. alpha)."""
  if name not in ABLATIONS:
    raise ValueError(f'unknown ablation {name!r}; choose one of {sorted(ABLATIONS)}')
  model_kwargs = {'use_cfi': False} if name == 'no_cfi' else {}
  return LossConfig(**{**ABLATIONS[name], **overrides}), model_kwargs


def l1(a: jax.Array, b: jax.Array) -> jax.Array:
  """Mean absolute error."""
  return jnp.mean(jnp.abs(a - b))


def laplacian8(x: jax.Array) -> jax.Array:
  """8-neighbour Laplacian [[1,1,1],[1,-8,1],[1,1,1]] of NHWC `x`, zero padding 1 (as the release's conv2d)."""
  _, h, w, _ = x.shape
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  window_sum = sum(padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3))
  return window_sum - 9.0 * x


def fidelity_loss(fused: jax.Array, vis: jax.Array, ir: jax.Array, lambda_grad: float = 1.0,
                  intensity: str = 'release', gradient: str = 'release') -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_f = intensity term + lambda * gradient term, and its terms.

  The intensity term is L1(F, vis) + L1(F, ir) ('release') or L1(F, max(vis, ir)) ('max'; LossConfig.intensity),
  the gradient term L1(|Lap F|, max(|Lap vis|, |Lap ir|)) ('release') or L1(Lap F, Lap max(vis, ir)) ('of_max';
  LossConfig.gradient).
  """
  if gradient == 'of_max':
    grad = l1(laplacian8(fused), laplacian8(jnp.maximum(vis, ir)))
  else:
    grad = l1(jnp.abs(laplacian8(fused)), jnp.maximum(jnp.abs(laplacian8(vis)), jnp.abs(laplacian8(ir))))
  if intensity == 'max':
    l1_max = l1(fused, jnp.maximum(vis, ir))
    return l1_max + lambda_grad * grad, {'l1_max': l1_max, 'grad': grad}
  l1_vis = l1(fused, vis)
  l1_ir = l1(fused, ir)
  return l1_vis + l1_ir + lambda_grad * grad, {'l1_vis': l1_vis, 'l1_ir': l1_ir, 'grad': grad}


def gate_map(gates: Sequence[jax.Array], size: tuple[int, int]) -> jax.Array:
  """Mean over the scales of the gates, each upsampled bilinearly (align_corners=False) to `size`: [N,H,W,1]."""
  return sum(ops.resize_bilinear(g, size) for g in gates) / len(gates)


def binary_entropy(p: jax.Array) -> jax.Array:
  """-(p log p + (1-p) log(1-p)) with p clamped into [1e-6, 1 - 1e-6], elementwise."""
  p = jnp.clip(p, _ENTROPY_EPS, 1.0 - _ENTROPY_EPS)
  return -(p * jnp.log(p) + (1.0 - p) * jnp.log1p(-p))


def invariance_terms(fused_d: jax.Array, fused_clean: jax.Array, gates_d: Sequence[jax.Array],
                     eta: float = 0.3) -> dict[str, jax.Array]:
  """Consistency C_d, area A_d and entropy E_d of one intervention d, with the gates of the intervened pass."""
  g = gate_map(gates_d, fused_d.shape[1:3])
  return {
      'consistency': jnp.mean(jnp.abs(fused_d - fused_clean) * g),
      'area': jnp.mean(jnp.abs(jnp.mean(g, axis=(1, 2, 3)) - eta)),
      'entropy': jnp.mean(binary_entropy(g)),
  }


def invariance_loss(fused_clean: jax.Array, intervened: Sequence[tuple[jax.Array, Sequence[jax.Array]]],
                    eta: float = 0.3, entropy_sign: str = 'release') -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_inv = mean_d (C_d + A_d -/+ E_d) over the (fused_d, gates_d) of the masking interventions.

  With the release's two interventions this is its 1/2 sum_d; 'release' subtracts the entropy, 'paper' adds it.
  """
  if not intervened:
    raise ValueError('invariance_loss needs at least one intervened pass')
  sign = -1.0 if entropy_sign == 'release' else 1.0
  terms = [invariance_terms(f, fused_clean, g, eta) for f, g in intervened]
  parts = {k: sum(t[k] for t in terms) / len(terms) for k in ('consistency', 'area', 'entropy')}
  return parts['consistency'] + parts['area'] + sign * parts['entropy'], parts


def necessity_loss(fused: jax.Array, fused_ir_only: jax.Array, fused_vis_only: jax.Array, mode: str = 'release',
                   margin: float = 0.1) -> jax.Array:
  """L_nec: L1(F, F_ir-only) + L1(F, F_vis-only) ('release'), or the sum of max(0, margin - L1) ('hinge')."""
  d_ir, d_vis = l1(fused, fused_ir_only), l1(fused, fused_vis_only)
  if mode == 'release':
    return d_ir + d_vis
  return jax.nn.relu(margin - d_ir) + jax.nn.relu(margin - d_vis)


def total_loss(fused: jax.Array, gates: Sequence[jax.Array], vis: jax.Array, ir: jax.Array,
               config: LossConfig) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The training loss from the stacked outputs of the views in `config.view_names`.

  Args:
    fused: [S,B,H,W,1] fused outputs, one per view.
    gates: the per-scale gates, each [S,B,h,w,1].
    vis, ir: the clean inputs [B,H,W,1].
    config: the loss configuration that produced the views.

  Returns:
    (L, terms): terms holds every loss term as a scalar. L_inv / L_nec are reported whenever their views ran, and
    enter L only when use_inv / use_nec is set.
  """
  names = config.view_names
  if fused.shape[0] != len(names):
    raise ValueError(f'expected {len(names)} stacked views {names}, got fused of shape {fused.shape}')
  fused = fused.astype(jnp.float32)
  gates = [g.astype(jnp.float32) for g in gates]
  view = {name: i for i, name in enumerate(names)}
  clean = fused[view[interventions.CLEAN]]
  loss_f, f_terms = fidelity_loss(clean, vis, ir, config.lambda_grad, config.intensity, config.gradient)
  terms = {'loss_f': loss_f, **{f'loss_f_{k}': v for k, v in f_terms.items()}}
  loss = loss_f
  masked = [view[n] for n in (interventions.COMPLEMENTARY, interventions.RANDOM) if n in view]
  if masked:
    loss_inv, inv_terms = invariance_loss(clean, [(fused[i], [g[i] for g in gates]) for i in masked],
                                          config.eta, config.entropy_sign)
    terms.update(loss_inv=loss_inv, **{f'loss_inv_{k}': v for k, v in inv_terms.items()})
    if config.use_inv:
      loss = loss + config.alpha * loss_inv
  if config.dropout:
    loss_nec = necessity_loss(clean, fused[view[interventions.VIS_DROPPED]], fused[view[interventions.IR_DROPPED]],
                              config.nec_mode, config.nec_margin)
    terms['loss_nec'] = loss_nec
    if config.use_nec:
      loss = loss + config.beta * loss_nec
  terms['loss'] = loss
  return loss, terms
