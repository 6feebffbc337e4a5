"""Train state, optimizer and the sharded initialisation.

The state is flax's `TrainState` (params, optimizer state, step; `apply_fn`
and `tx` are static). It is born sharded: `jax.eval_shape` gives the abstract
state (also the restore target for checkpoints) and `jax.jit(init_fn,
out_shardings=...)` materialises it directly on the mesh, so no full copy is
ever built on one device first.
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from factorecg_jax.training import sharding

TrainState = train_state.TrainState

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


def create_train_state(
    rng: jax.Array,
    model: nn.Module,
    tx: optax.GradientTransformation,
    input_shape: tuple[int, ...],
    mesh: jax.sharding.Mesh,
    input_dtype: Any = jnp.float32,
) -> tuple[TrainState, TrainState]:
  """Initialises the train state directly in its (replicated) sharding.

  Args:
    rng: PRNG key; split into the `INIT_RNG_STREAMS`.
    model: Linen module, initialised as `model.init(rngs, x)`.
    tx: optimizer.
    input_shape: shape of one model input including a batch axis, e.g.
      `(1, 600, 12)`; the batch size does not affect the parameters.
    mesh: mesh to place the state on.
    input_dtype: dtype of the dummy input.

  Returns:
    `(state, abstract_state)`: the initialised state and its
    `jax.ShapeDtypeStruct` tree whose leaves carry the target shardings (the
    restore target for checkpoints).
  """

  def init_fn(rng):
    keys = jax.random.split(rng, len(INIT_RNG_STREAMS))
    rngs = dict(zip(INIT_RNG_STREAMS, keys))
    variables = model.init(rngs, jnp.zeros(input_shape, input_dtype))
    state = TrainState.create(
        apply_fn=model.apply, params=variables['params'], tx=tx
    )
    # A strongly typed step keeps the jitted step's signature identical
    # before and after a checkpoint restore (no retrace on resume).
    return state.replace(step=jnp.zeros((), jnp.int32))

  abstract = jax.eval_shape(init_fn, rng)
  # Pure data parallelism: every leaf is replicated over the mesh.
  state_sharding = jax.tree.map(lambda _: sharding.replicated(mesh), abstract)
  state = jax.jit(init_fn, out_shardings=state_sharding)(rng)
  abstract_state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      abstract, state_sharding,
  )
  return state, abstract_state
