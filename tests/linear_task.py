"""A linear-regression task for the training loop's tests: it compiles in a fraction of a second.

Also usable as a launch.train config file (--config=tests/linear_task.py) once `register_task("linear",
"linear_task")` has run with tests/ on sys.path.
"""
from typing import Any

import flax.struct
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from launch import task as task_lib

_DIM = 4
_W_TRUE = np.arange(1, _DIM + 1, dtype=np.float32)


@flax.struct.dataclass
class _State:
  step: jax.Array
  params: dict
  batch_stats: dict
  opt_state: Any
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


class LinearTask(task_lib.Task):
  """Fits y = x . w_true; `nan_at_step` poisons the loss (or only the params) at that step."""

  name = "linear"

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  def model_config(self) -> dict:
    return {"dim": _DIM}

  def train_dataset(self, *, seed, process_index, process_count):
    def example(i):
      x = np.random.default_rng([seed, i]).normal(size=_DIM).astype(np.float32)
      return {"x": x, "y": np.float32(x @ _W_TRUE)}

    return (grain.MapDataset.range(10**9)[process_index::process_count].map(example)
            .batch(self.config.batch_size // process_count).to_iter_dataset())

  def init_state(self, key, example_batch):
    params = {"w": jax.random.normal(key, (_DIM,))}
    tx = optax.adam(self.config.learning_rate)
    return _State(step=jnp.zeros((), jnp.int32), params=params, batch_stats={"mean_y": jnp.zeros(())},
                  opt_state=tx.init(params), tx=tx)

  def train_step(self, state, batch, key):
    poison = jnp.where(state.step + 1 == self.config.nan_at_step, jnp.nan, 0.0)
    noise = 1e-3 * jax.random.normal(key, batch["y"].shape)

    def loss_fn(params):
      loss = jnp.mean((batch["x"] @ params["w"] - batch["y"] + noise) ** 2)
      return loss + poison if self.config.nan_target == "loss" else loss

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = state.tx.update(grads, state.opt_state)
    params = optax.apply_updates(state.params, updates)
    if self.config.nan_target == "params":
      params = jax.tree.map(lambda p: p + poison, params)
    mean_y = 0.9 * state.batch_stats["mean_y"] + 0.1 * jnp.mean(batch["y"])
    new_state = state.replace(step=state.step + 1, params=params, batch_stats={"mean_y": mean_y},
                              opt_state=opt_state)
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}

  def evaluate(self, state, step):
    error = np.abs(np.asarray(state.params["w"]) - _W_TRUE)
    grid = np.clip(error * 50, 0, 255).astype(np.uint8).reshape(1, _DIM).repeat(4, axis=0)
    # A metric can be undefined (e.g. multi-scale SSIM on small images); the loop must log it as null.
    return {"w_error": float(error.max()), "undefined": float("nan")}, grid


class OtherTask(LinearTask):
  name = "other"


def get_config(**overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(dict(
      task="linear", seed=3, num_steps=4, batch_size=8, log_every=2, eval_every=2, checkpoint_every=1,
      keep_checkpoints=10, matmul_precision="default", learning_rate=0.1, nan_at_step=0,
      nan_target="loss"))
  config.update(overrides)
  return config


def make_task(config: ml_collections.ConfigDict) -> LinearTask:
  return LinearTask(config)
