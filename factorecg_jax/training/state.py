"""Train state, optimizer and the sharded initialisation.

The state is flax's `TrainState` (params, optimizer state, step; `apply_fn`
and `tx` are static) with one field added, `batch_stats`, as flax
examples/imagenet does: the model's non-parameter variables (BatchNorm
running statistics; `{}` for a stateless model such as the VAE). It is born
sharded: `jax.eval_shape` gives the abstract
state (also the restore target for checkpoints) and `jax.jit(init_fn,
out_shardings=...)` materialises it directly on the mesh, so no full copy is
ever built on one device first.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state

from factorecg_jax.training import sharding

# Variable collections kept in the train state besides 'params'. Others that
# `init` may return ('intermediates' from `sow`, 'perturbations') are
# per-call outputs, not state.
STATE_COLLECTIONS = ('batch_stats',)


class TrainState(train_state.TrainState):
  """flax's TrainState plus the model's mutable state (imagenet train.py).

  Attributes:
    batch_stats: the 'batch_stats' collection (BatchNorm running mean and
      variance), updated by every training step; `{}` for models without
      one.
  """

  batch_stats: Any = struct.field(default_factory=dict)

  @property
  def model_state(self) -> dict[str, Any]:
    """The non-parameter variables, `{'batch_stats': ...}` or `{}`.

    What a task's `loss_fn`/`eval_fn` receive as `model_state`; a model is
    applied to `{'params': params, **model_state}`.
    """
    return {'batch_stats': self.batch_stats} if self.batch_stats else {}

# RNG streams a model may draw from at init; unused streams are ignored.
INIT_RNG_STREAMS = ('params', 'sample', 'dropout')


def create_learning_rate_fn(
    optim: Mapping[str, Any], num_steps: int
) -> optax.Schedule:
  """Linear warmup then a constant or cosine learning rate.

  Args:
    optim: config with `lr`, `warmup_steps` and `schedule` ('constant' or
      'cosine'; cosine decays to 0 at `num_steps`).
    num_steps: total number of training steps.

  Returns:
    A schedule, step (int) -> learning rate (float32 scalar).
  """
  lr = float(optim['lr'])
  warmup_steps = int(optim.get('warmup_steps', 0))
  name = optim.get('schedule', 'constant')
  if name == 'constant':
    main = optax.constant_schedule(lr)
  elif name == 'cosine':
    main = optax.cosine_decay_schedule(lr, max(num_steps - warmup_steps, 1))
  else:
    raise ValueError(
        f"Unknown optim.schedule={name!r}; expected 'constant' or 'cosine'."
    )
  if warmup_steps <= 0:
    return main
  warmup = optax.linear_schedule(0.0, lr, warmup_steps)
  return optax.join_schedules([warmup, main], [warmup_steps])


def create_optimizer(
    optim: Mapping[str, Any], learning_rate_fn: optax.Schedule
) -> optax.GradientTransformation:
  """Builds the optax chain: optional global-norm clipping, then Adam(W).

  Args:
    optim: config with `name` ('adam' or 'adamw'), `b1`, `b2`,
      `weight_decay` (adamw only; decoupled, Loshchilov & Hutter 2019) and
      `grad_clip_norm` (0 disables clipping).
    learning_rate_fn: schedule from `create_learning_rate_fn`.

  Returns:
    The gradient transformation.

  Raises:
    ValueError: for an unknown optimizer name, or weight decay with 'adam'.
  """
  name = optim['name']
  b1, b2 = float(optim.get('b1', 0.9)), float(optim.get('b2', 0.999))
  weight_decay = float(optim.get('weight_decay', 0.0))
  if name == 'adam':
    if weight_decay:
      raise ValueError(
          f"optim.weight_decay={weight_decay} has no effect with 'adam'; use "
          "optim.name='adamw' or set weight_decay=0."
      )
    opt = optax.adam(learning_rate_fn, b1=b1, b2=b2)
  elif name == 'adamw':
    opt = optax.adamw(learning_rate_fn, b1=b1, b2=b2, weight_decay=weight_decay)
  else:
    raise ValueError(
        f"Unknown optim.name={name!r}; expected 'adam' or 'adamw'."
    )
  clip = float(optim.get('grad_clip_norm', 0.0))
  if clip > 0:
    return optax.chain(optax.clip_by_global_norm(clip), opt)
  return opt


def _make_init_fn(
    model: nn.Module,
    tx: optax.GradientTransformation,
    input_shape: tuple[int, ...],
    input_dtype: Any,
    extra_input_shapes: Sequence[tuple[int, ...]],
):
  """`rng -> TrainState`, the initialiser both functions below trace."""

  def init_fn(rng):
    keys = jax.random.split(rng, len(INIT_RNG_STREAMS))
    rngs = dict(zip(INIT_RNG_STREAMS, keys))
    inputs = [jnp.zeros(input_shape, input_dtype)]
    inputs += [jnp.zeros(tuple(s), jnp.float32) for s in extra_input_shapes]
    variables = model.init(rngs, *inputs)
    state = TrainState.create(
        apply_fn=model.apply, params=variables['params'], tx=tx,
        batch_stats=variables.get('batch_stats', {}),
    )
    # A strongly typed step keeps the jitted step's signature identical
    # before and after a checkpoint restore (no retrace on resume).
    return state.replace(step=jnp.zeros((), jnp.int32))

  return init_fn


def _with_shardings(abstract: Any, mesh: jax.sharding.Mesh) -> Any:
  # Pure data parallelism: every leaf is replicated over the mesh.
  repl = sharding.replicated(mesh)
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl),
      abstract,
  )


def abstract_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    input_shape: tuple[int, ...],
    mesh: jax.sharding.Mesh,
    input_dtype: Any = jnp.float32,
    *,
    extra_input_shapes: Sequence[tuple[int, ...]] = (),
) -> TrainState:
  """The train state's `jax.ShapeDtypeStruct` tree, replicated on `mesh`.

  Computes and allocates nothing: the restore target of a checkpoint.
  Arguments as `create_train_state`.
  """
  init_fn = _make_init_fn(model, tx, tuple(input_shape), input_dtype,
                          extra_input_shapes)
  return _with_shardings(jax.eval_shape(init_fn, jax.random.key(0)), mesh)


def create_train_state(
    rng: jax.Array,
    model: nn.Module,
    tx: optax.GradientTransformation,
    input_shape: tuple[int, ...],
    mesh: jax.sharding.Mesh,
    input_dtype: Any = jnp.float32,
    *,
    extra_input_shapes: Sequence[tuple[int, ...]] = (),
) -> tuple[TrainState, TrainState]:
  """Initialises the train state directly in its (replicated) sharding.

  Every collection `model.init` makes is initialised: 'params' and, for
  models with BatchNorm, 'batch_stats' (the state's `batch_stats`).

  Args:
    rng: PRNG key; split into the `INIT_RNG_STREAMS`.
    model: Linen module, initialised as `model.init(rngs, x, *extras)`.
    tx: optimizer.
    input_shape: shape of one model input including a batch axis, e.g.
      `(1, 600, 12)`; the batch size does not affect the parameters.
    mesh: mesh to place the state on.
    input_dtype: dtype of the dummy input.
    extra_input_shapes: shapes of further positional inputs (float32
      zeros), e.g. `[(1, 2)]` for a ResNet's `extra` (age, sex).

  Returns:
    `(state, abstract_state)`: the initialised state and its
    `jax.ShapeDtypeStruct` tree whose leaves carry the target shardings (the
    restore target for checkpoints).
  """
  init_fn = _make_init_fn(model, tx, tuple(input_shape), input_dtype,
                          extra_input_shapes)
  abstract_state = _with_shardings(jax.eval_shape(init_fn, rng), mesh)
  state_sharding = jax.tree.map(lambda x: x.sharding, abstract_state)
  state = jax.jit(init_fn, out_shardings=state_sharding)(rng)
  return state, abstract_state
