"""What L_f asks for: its per-image minimiser, scored like a fusion, beside the average and the maximum.

  python benchmarks/cfi_lf_optimum.py [--config=demo] [--lambdas=0.1,1] [--gradients=release,of_max] [--steps=3000]

No network: for each held-out pair of the config's data (the demo: its 8 synthetic 192x192 pairs) the fused image's
pixels themselves minimise L_f (cfi_jax.losses.fidelity_loss with the config's intensity term, each gradient term
and weight given) by Adam from the per-pixel maximum. Prints the tang2023 means (Qabf, VIF, SSIM, SF, AG) of each
minimiser, then of the plain average and the maximum. A network trained on L_f cannot beat its own minimiser by much
on metrics that reward copying a source (VIF, SSIM): a loss whose minimiser loses to the average there is the cause,
not the network or its steps.
"""
import itertools
import pathlib
import sys

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cfi_jax import losses  # noqa: E402
from cfi_jax import metrics  # noqa: E402
from input_pipeline import fusion_data  # noqa: E402
from launch import fusion_eval  # noqa: E402
from launch.configs import cfi as cfi_configs  # noqa: E402

_CONFIG = flags.DEFINE_string('config', 'demo', 'Variants of launch/configs/cfi.py: the held-out pairs and the '
                              'intensity term.')
_LAMBDAS = flags.DEFINE_list('lambdas', ['0.1', '1'], 'Weights of the gradient term.')
_GRADIENTS = flags.DEFINE_list('gradients', list(losses.GRADIENT_TERMS), 'Gradient terms (LossConfig.gradient); '
                                '`of_max` needs a config whose intensity term is `max`.')
_STEPS = flags.DEFINE_integer('steps', 3000, 'Adam steps on the pixels.')
_LEARNING_RATE = flags.DEFINE_float('learning_rate', 1e-3, 'Adam rate on the pixels (in [0, 1] units).')
_METRICS = ('Qabf', 'VIF', 'SSIM', 'SF', 'AG')


def minimise_lf(vis: jax.Array, ir: jax.Array, *, lambda_grad: float, intensity: str, gradient: str, steps: int,
                learning_rate: float) -> jax.Array:
  """The pixels F in [0, 1] that minimise L_f for [N,H,W,1] sources, by Adam from max(vis, ir)."""
  loss = lambda f: losses.fidelity_loss(f, vis, ir, lambda_grad, intensity, gradient)[0]
  optimizer = optax.adam(learning_rate)

  def step(carry, _):
    f, state = carry
    updates, state = optimizer.update(jax.grad(loss)(f), state)
    return (jnp.clip(optax.apply_updates(f, updates), 0.0, 1.0), state), None

  start = jnp.maximum(vis, ir)
  (fused, _), _ = jax.jit(lambda f: jax.lax.scan(step, (f, optimizer.init(f)), None, length=steps))(start)
  return fused


def _to_u8(x) -> np.ndarray:
  return np.clip(np.round(np.asarray(x, np.float64) * 255.0), 0, 255).astype(np.uint8)


def mean_metrics(fused_u8: np.ndarray, ir_u8: np.ndarray, vis_u8: np.ndarray) -> dict[str, float]:
  """tang2023 means over N pairs of uint8 [N,H,W] images."""
  scores = metrics.compute_metrics_batch(fused_u8, ir_u8, vis_u8, dialect='tang2023')
  return {k: float(np.mean(scores[k])) for k in _METRICS}


def main(argv):
  del argv
  config = cfi_configs.get_config(_CONFIG.value)
  pairs = fusion_data.make_eval_pairs(config.data)
  if len({p['ir'].shape for p in pairs}) != 1:
    raise SystemExit(f'--config={_CONFIG.value}: the held-out pairs differ in size; this script needs one size')
  vis = jnp.asarray(np.stack([p['vis'] for p in pairs])[..., None])
  ir = jnp.asarray(np.stack([p['ir'] for p in pairs])[..., None])
  intensity = config.loss.intensity
  for gradient in _GRADIENTS.value:
    try:
      losses.LossConfig(intensity=intensity, gradient=gradient)
    except ValueError as e:
      raise SystemExit(f'--gradients={gradient} with --config={_CONFIG.value} (intensity term {intensity!r}): {e}; '
                       'or pass --gradients=release') from None
  runs = list(itertools.product(_GRADIENTS.value, map(float, _LAMBDAS.value)))
  rows = {}
  for gradient, lambda_grad in tqdm.tqdm(runs, desc='minimising L_f', unit='run'):
    fused = minimise_lf(vis, ir, lambda_grad=lambda_grad, intensity=intensity, gradient=gradient,
                        steps=_STEPS.value, learning_rate=_LEARNING_RATE.value)
    rows[f'L_f minimiser, {gradient}, lambda {lambda_grad:g}'] = _to_u8(fused[..., 0])
  ir_u8, vis_u8 = _to_u8(ir[..., 0]), _to_u8(vis[..., 0])
  baselines = [fusion_eval.baseline_images(a, b) for a, b in zip(ir_u8, vis_u8)]
  rows.update({name: np.stack([b[name] for b in baselines]) for name in ('average', 'maximum')})
  print(f'{len(pairs)} held-out pairs of {_CONFIG.value}, intensity term {intensity!r}; tang2023 means')
  print(f'{"fusion":<34}' + ''.join(f'{k:>8}' for k in _METRICS))
  for name, fused_u8 in rows.items():
    scores = mean_metrics(fused_u8, ir_u8, vis_u8)
    print(f'{name:<34}' + ''.join(f'{scores[k]:8.3f}' for k in _METRICS))


if __name__ == '__main__':
  app.run(main)
