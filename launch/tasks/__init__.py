"""Registry of training tasks: config.task -> the module whose `make_task(config) -> Task` builds it.

A model family is a module with `make_task(config: ml_collections.ConfigDict) -> Task` (see launch/task.py): add
the project's own to _TASK_MODULES; code outside the project (or a test) calls register_task. Modules are imported
lazily so that training one family never imports another's dependencies.
"""
import importlib

import ml_collections

from input_pipeline import errors
from launch import task as task_lib

_TASK_MODULES = {
    "cfi": "launch.tasks.cfi",
    "dfc": "launch.tasks.dfc",
}


def register_task(name: str, module: str) -> None:
  """Makes config.task == name build its task with `module`.make_task (module: an importable dotted name)."""
  if name in _TASK_MODULES and _TASK_MODULES[name] != module:
    raise ValueError(f"Task {name!r} is already registered to {_TASK_MODULES[name]}.")
  _TASK_MODULES[name] = module


def task_names() -> list[str]:
  return sorted(_TASK_MODULES)


def make_task(config: ml_collections.ConfigDict) -> task_lib.Task:
  """Builds the task named by config.task from the whole experiment config."""
  name = config.get("task")
  if name not in _TASK_MODULES:
    raise errors.ConfigError(f"Unknown config.task {name!r}; known tasks: {', '.join(task_names())}.")
  module = importlib.import_module(_TASK_MODULES[name])
  task = module.make_task(config)
  if not isinstance(task, task_lib.Task):
    raise TypeError(f"{_TASK_MODULES[name]}.make_task returned {type(task).__name__}, which lacks the Task protocol "
                    "(launch/task.py).")
  return task
