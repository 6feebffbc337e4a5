"""Saving and restoring the train state with orbax.

Kept to a manager factory and two small functions so that a later move to
orbax's V1 API (`ocp.training.Checkpointer`) stays local to this file. Every
process calls these functions (orbax coordinates the writes); checkpoints live
in `<workdir>/checkpoints/<step>`.
"""

import os
from typing import Any, TypeVar

import orbax.checkpoint as ocp

State = TypeVar('State')


def create_manager(
    workdir: str,
    *,
    max_to_keep: int | None = None,
    save_interval_steps: int = 1,
) -> ocp.CheckpointManager:
  """Returns a manager for `<workdir>/checkpoints`.

  Args:
    workdir: run directory (created if missing).
    max_to_keep: newest checkpoints to keep; `None` keeps all.
    save_interval_steps: saves happen at multiples of this (unless forced).
  """
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      save_interval_steps=max(int(save_interval_steps), 1),
      create=True,
  )
  return ocp.CheckpointManager(directory, options=options)


def save(
    manager: ocp.CheckpointManager, step: int, state: Any, *,
    force: bool = False
) -> bool:
  """Starts an (asynchronous) save of `state` at `step`.

  The arrays are copied off the devices before this returns, so `state` may
  be donated to the next step right away. Call `manager.wait_until_finished()`
  before the process exits.

  Args:
    manager: from `create_manager`.
    step: number of completed training steps.
    state: pytree of (sharded) arrays, e.g. a `TrainState`.
    force: save even if `step` is not a multiple of the save interval.

  Returns:
    Whether a save was started.
  """
  return manager.save(step, args=ocp.args.StandardSave(state), force=force)


def restore(
    manager: ocp.CheckpointManager, abstract_state: State,
    step: int | None = None
) -> State:
  """Restores a checkpoint into the structure and shardings of a target.

  Args:
    manager: from `create_manager`.
    abstract_state: pytree of `jax.ShapeDtypeStruct` with `sharding` set
      (`state.create_train_state`'s second output); leaves come back placed
      accordingly, so the restored state is born sharded.
    step: checkpoint to restore; `None` means the latest.

  Returns:
    The restored pytree, same structure as `abstract_state`.

  Raises:
    FileNotFoundError: if there is no checkpoint to restore.
  """
  if step is None:
    step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f'No checkpoint in {manager.directory}.')
  return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
