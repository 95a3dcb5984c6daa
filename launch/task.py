"""The contract between the shared training loop (launch/trainer.py) and a model family (CFI, DFC-Net).

A task owns everything model-specific: the dataset, the train state, the pure train step and the evaluation. The
loop owns everything else: devices and shardings, jit, PRNG keys, checkpoints, logging and resume.

A family subclasses Task, which gives the optional parts (resumable_fields, added_field_defaults, write_samples)
their defaults, so the loop reads them as plain attributes.
"""
import pathlib
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

import grain
import jax
import numpy as np

# A pytree (usually a flax.struct.dataclass) with at least `.step`, `.params` and `.batch_stats`.
State = Any
Batch = dict[str, Any]


@runtime_checkable
class Task(Protocol):
  """One model family trained by launch/trainer.py.

  Attributes:
    name: the model name written into the checkpoint config as 'model' ('cfi' | 'dfc'; older
      checkpoints may hold a former name, launch/checkpoints.FORMER_MODEL_NAMES).
    resumable_fields: dotted config paths that change how a step runs but not what it computes (CFI's
      view_batching), so a run may resume from a checkpoint written with other values (launch/trainer.py).
    added_field_defaults: {dotted config path: value} for fields added after checkpoints were already being
      written, the value reproducing what the code did before, so those older checkpoints still resume.
  """

  name: ClassVar[str]
  resumable_fields: ClassVar[frozenset[str]] = frozenset()
  added_field_defaults: ClassVar[Mapping[str, Any]] = types.MappingProxyType({})

  def model_config(self) -> dict[str, Any]:
    """JSON-serialisable constructor kwargs of the model; saved in every checkpoint's config."""
    ...

  def train_dataset(self, *, seed: int, process_index: int, process_count: int) -> grain.IterDataset:
    """Infinite dataset of this process's share of each global batch (numpy arrays, leading batch axis)."""
    ...

  def init_state(self, key: jax.Array, example_batch: Batch) -> State:
    """Fresh train state; `example_batch` is one per-process batch (for shapes only)."""
    ...

  def train_step(self, state: State, batch: Batch, key: jax.Array) -> tuple[State, dict[str, jax.Array]]:
    """One optimisation step; pure and jit-able. The loop jits it, shards `batch` over 'data' and replicates
    `state`, and derives `key` from the step number so that resumed runs are exact. Metrics are scalars and must
    include 'loss' (the loop stops on a non-finite loss)."""
    ...

  def evaluate(self, state: State, step: int) -> tuple[dict[str, float], np.ndarray | None]:
    """Metrics on the held-out split and an optional uint8 image grid (HxW or HxWx3) that the loop writes as PNG.

    Called on process 0 only, with a copy of the state that lives on one local device (so evaluation needs no
    collectives and is not repeated on every device)."""
    ...

  def write_samples(self, directory: pathlib.Path) -> None:
    """Optional: writes a few held-out inputs into `directory` as files, so a user can try the inference binary on
    them (called once per run, on process 0). By default nothing is written."""
    del directory


StepFn = Callable[[State, Batch, jax.Array], tuple[State, dict[str, jax.Array]]]


@runtime_checkable
class PlatformDependent(Protocol):
  """Optional extra of a task whose step is best run differently per platform (CFI's view_batching='auto')."""

  def train_step_for(self, platform: str) -> Callable[[State, Batch, jax.Array], tuple[State, dict[str, jax.Array]]]:
    """`train_step` for devices of `platform` ('cpu', 'gpu', 'tpu'): the platform the loop compiles the step for,
    which is not always jax's default backend."""
    ...


@runtime_checkable
class Phased(Protocol):
  """Optional extra of a task whose training runs different step programs over consecutive step ranges (DFC-Net's
  pose pretraining). Each is its own compiled program: one program choosing between them with lax.cond would be
  slower, as XLA's CPU backend runs the convolutions inside a conditional without its fast kernels (~30x here)."""

  def train_phases(self) -> Sequence[tuple[int, StepFn]]:
    """(first step, train step) pairs in step order, the first from step 0: each step function (train_step's
    signature) runs while state.step is at or above its first step and below the next one's. Every phase's
    metrics have the same names."""
    ...


@runtime_checkable
class Watched(Protocol):
  """Optional extra of a task whose training can fail with finite losses (a GAN's generator collapsing), which the
  loop's non-finite check cannot see."""

  def training_failure(self, history: Sequence[tuple[int, Mapping[str, float]]]) -> str | None:
    """Why training has failed, or None, given (last step, metric means) of this run's log intervals in step order,
    the newest last (at a checkpoint step between logs, the interval so far). A message stops the loop as a
    non-finite loss does: no checkpoint is written after it."""
    ...
