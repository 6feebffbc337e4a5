"""Task losses and evaluations; `TASKS` maps a config's `task` to one.

A task (`Task`, docs/CONTRACTS.md) supplies pure functions and settings:

* `loss_fn(params, batch, rng, *, model, model_state, **kw) -> (loss,
  (metrics, new_model_state))`: a mask-weighted mean over the batch (padded
  rows weigh nothing), its scalar metrics, and the model's updated
  non-parameter variables (`{'batch_stats': ...}` after a BatchNorm model's
  training step; `model_state` itself, often `{}`, for stateless models);
* `eval_fn(params, batch, *, model, model_state, **kw) -> {name: [batch,
  ...]}`: per-example values; the loop averages them over real rows, except
  those named in `collect`;
* `collect`: names of per-example arrays the loop gathers over the whole
  eval split (real rows only, record order, all devices and processes):
  `eval_fn` outputs or batch keys ('index', 'time', 'event', ...);
* `summarize_fn(means, collected) -> {name: float}`: split-level scalars from
  the means and the collected arrays (AUROC, C-index, active units);
* `inputs_fn(batch, **kw) -> tuple of model inputs` (optional; default
  `(batch['ecg'],)`): their shapes initialise the model.

`model_state` is `TrainState.model_state`; a model is applied to
`{'params': params, **model_state}`. The loop passes `config.loss` as `**kw`
to `loss_fn`, `eval_fn` and `inputs_fn`.

Tasks: 'vae' (below); 'classify', 'regress' and 'cox' for models called
`model.apply(variables, x, extra, train=..., rngs={'dropout': ...},
mutable=[...]) -> (outputs [batch, K], aux)` like `resnet.ResNet`, with
`extra` [batch, E] the batch keys `extra_keys` (e.g. ('age', 'sex'))
joined, or None.

VAE (FactorECG, van de Leur et al. 2022; ecgxai 0.1.1 `utils/loss.py` with
`train_factorecg_vae.py`): loss = E_batch[NLL] + beta * E_batch[KL], with
NLL the Gaussian negative log-likelihood of the ECG under the decoder's
per-sample mean and sd, summed over the 600 x 12 samples, and KL the
divergence of N(mu, sd^2) from N(0, I), summed over the latents.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from factorecg_jax.training import survival_loss

Batch = Mapping[str, jax.Array]
Params = Any
ModelState = Mapping[str, Any]

# ecgxai's clipping of the posterior before the KL and its NaN filler.
MU_CLIP = 100.0
SD_CLIP = (1e-6, 100.0)
NAN_FILL = 50.0


class Task(NamedTuple):
  """What a task gives the training loop (see the module docstring)."""

  loss_fn: Callable[..., tuple[jax.Array, tuple[dict[str, jax.Array],
                                                ModelState]]]
  eval_fn: Callable[..., dict[str, jax.Array]]
  summarize_fn: Callable[
      [dict[str, np.ndarray], dict[str, np.ndarray]], dict[str, float]
  ] | None = None
  collect: tuple[str, ...] = ()
  inputs_fn: Callable[..., tuple[jax.Array | None, ...]] | None = None


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """sum(mask * values) / sum(mask); 0 for an all-padding batch."""
  return jnp.sum(mask * values) / jnp.maximum(jnp.sum(mask), 1.0)


def gaussian_nll(
    x: jax.Array,
    mean: jax.Array,
    sd: jax.Array,
    *,
    nan_fill: float = NAN_FILL,
) -> jax.Array:
  """Gaussian negative log-likelihood per example (ecgxai GaussianVAEReconLoss).

  `sum_i 0.5 log(2 pi) + 0.5 log(sd_i^2) + 0.5 (x_i - mean_i)^2 / sd_i^2`
  over every sample i of an example; NaNs in `mean` or `sd` are replaced by
  `nan_fill` first, as ecgxai does.

  Args:
    x: [batch, ...] targets (mV).
    mean: [batch, ...] predicted means, same shape.
    sd: [batch, ...] predicted standard deviations (> 0).
    nan_fill: value that replaces NaNs in `mean` and `sd`.

  Returns:
    [batch] float32 NLL in nats.
  """
  x = x.astype(jnp.float32)
  mean = mean.astype(jnp.float32)
  sd = sd.astype(jnp.float32)
  mean = jnp.where(jnp.isnan(mean), nan_fill, mean)
  sd = jnp.where(jnp.isnan(sd), nan_fill, sd)
  var = jnp.square(sd)
  nll = 0.5 * np.log(2 * np.pi) + 0.5 * jnp.log(var)
  nll = nll + 0.5 * jnp.square(x - mean) / var
  return jnp.sum(nll.reshape(nll.shape[0], -1), axis=1)


def gaussian_kl(
    mu: jax.Array,
    sd: jax.Array,
    *,
    mu_clip: float = MU_CLIP,
    sd_clip: tuple[float, float] = SD_CLIP,
) -> jax.Array:
  """KL(N(mu, sd^2) || N(0, 1)) per latent (ecgxai KLDivergence, sd given).

  `-0.5 (1 + log sd^2 - mu^2 - sd^2)` after clipping mu to +-mu_clip and sd
  to `sd_clip`, as ecgxai does (the clip also stops the gradient outside).

  Args:
    mu: [batch, latents] posterior means.
    sd: [batch, latents] posterior standard deviations.
    mu_clip: bound on |mu|.
    sd_clip: (low, high) bounds on sd.

  Returns:
    [batch, latents] float32 KL in nats (sum over latents for ecgxai's).
  """
  mu = jnp.clip(mu.astype(jnp.float32), -mu_clip, mu_clip)
  sd = jnp.clip(sd.astype(jnp.float32), *sd_clip)
  var = jnp.square(sd)
  return -0.5 * (1.0 + jnp.log(var) - jnp.square(mu) - var)


def _batch_mask(batch: Batch) -> jax.Array:
  if 'mask' in batch:
    return batch['mask'].astype(jnp.float32)
  return jnp.ones(batch['ecg'].shape[:1], jnp.float32)


def _output_sd(aux: Mapping[str, jax.Array], fixed_sd: float) -> jax.Array:
  if fixed_sd > 0:
    return jnp.full_like(aux['recon_mean'], fixed_sd)
  return aux['recon_sd']


KL_SCHEDULES = ('constant', 'linear', 'cyclical')
VAE_OBJECTIVES = ('beta_vae', 'beta_tcvae')


def kl_weight(step: jax.Array | int | None, beta: float, *,
              schedule: str = 'constant', warmup_steps: int = 0
              ) -> jax.Array:
  """The KL weight at a training step.

  'constant': `beta` throughout. 'linear': from 0 to `beta` over the first
  `warmup_steps` steps (Bowman et al. 2016), then `beta`. 'cyclical': the
  linear ramp repeated every `warmup_steps` steps, rising over the first
  half of each cycle and holding `beta` for the second (Fu et al. 2019,
  R = 0.5).

  Args:
    step: the optimizer step (None: `beta`, e.g. in evaluation).
    beta: the full KL weight.
    schedule: one of `KL_SCHEDULES`.
    warmup_steps: ramp (linear) or cycle (cyclical) length in steps.

  Raises:
    ValueError: for an unknown schedule.
  """
  if schedule not in KL_SCHEDULES:
    raise ValueError(f'Unknown kl_schedule {schedule!r}; known: '
                     f'{", ".join(KL_SCHEDULES)}.')
  if step is None or schedule == 'constant' or warmup_steps <= 0:
    return jnp.asarray(beta, jnp.float32)
  step = jnp.asarray(step, jnp.float32)
  if schedule == 'linear':
    ramp = step / warmup_steps
  else:
    ramp = jnp.mod(step, warmup_steps) / (0.5 * warmup_steps)
  return beta * jnp.clip(ramp, 0.0, 1.0)


def _log_normal(z: jax.Array, mu: jax.Array, sd: jax.Array) -> jax.Array:
  return (-0.5 * np.log(2 * np.pi) - jnp.log(sd)
          - 0.5 * jnp.square((z - mu) / sd))


def tc_decomposition(z: jax.Array, mu: jax.Array, sd: jax.Array,
                     mask: jax.Array, dataset_size: int
                     ) -> dict[str, jax.Array]:
  """The KL term split as in beta-TC-VAE (Chen et al. 2018, NeurIPS).

  E_x KL(q(z|x) || p(z)) = index-code MI + total correlation + dimension-wise
  KL, each estimated on the batch with minibatch-weighted sampling (their
  eq. 4): log q(z_i) ~ logsumexp_j log q(z_i | x_j) - log(N M), with the
  padding rows (mask 0) left out of both the sum and M.

  Args:
    z: [batch, latents] posterior samples, one per row.
    mu, sd: [batch, latents] posterior parameters.
    mask: [batch] 1 for real rows.
    dataset_size: N, the number of training records.

  Returns:
    {'mi', 'tc', 'dw_kl'}: scalars (mask-weighted means over the batch).
  """
  z, mu, sd = (a.astype(jnp.float32) for a in (z, mu, sd))
  sd = jnp.clip(sd, *SD_CLIP)
  # [i, j, d]: log q(z_i,d | x_j).
  pairwise = _log_normal(z[:, None, :], mu[None, :, :], sd[None, :, :])
  m = jnp.maximum(jnp.sum(mask), 1.0)
  log_nm = jnp.log(dataset_size * m)
  col = jnp.where(mask[None, :, None] > 0, 0.0, -jnp.inf)
  log_qz = jax.nn.logsumexp(jnp.sum(pairwise, axis=2) + col[..., 0],
                            axis=1) - log_nm
  log_prod_qz = jnp.sum(jax.nn.logsumexp(pairwise + col, axis=1) - log_nm,
                        axis=1)
  log_qz_x = jnp.sum(_log_normal(z, mu, sd), axis=1)
  log_pz = jnp.sum(_log_normal(z, 0.0, 1.0), axis=1)
  return dict(mi=_masked_mean(log_qz_x - log_qz, mask),
              tc=_masked_mean(log_qz - log_prod_qz, mask),
              dw_kl=_masked_mean(log_prod_qz - log_pz, mask))


def vae_loss(
    params: Params,
    batch: Batch,
    rng: jax.Array,
    *,
    model: nn.Module,
    model_state: ModelState | None = None,
    beta: float = 32.0,
    sample: bool = True,
    nan_fill: float = NAN_FILL,
    mu_clip: float = MU_CLIP,
    sd_clip: tuple[float, float] = SD_CLIP,
    fixed_sd: float = 0.0,
    kl_schedule: str = 'constant',
    kl_warmup_steps: int = 0,
    objective: str = 'beta_vae',
    dataset_size: int = 0,
    mi_dw_weight: float = 1.0,
    step: jax.Array | None = None,
) -> tuple[jax.Array, tuple[dict[str, jax.Array], ModelState]]:
  """FactorECG training loss: mean NLL + beta * mean KL over real rows.

  With an all-ones mask and the defaults this is ecgxai's
  `CombinedLoss([GaussianVAEReconLoss('mean'), KLDivergence('mean',
  std_is_log=False)], ['+'], [1, beta])`. `objective='beta_tcvae'` replaces
  the KL term by a * MI + beta * TC + a * dimension-wise KL
  (`tc_decomposition`; Chen et al. 2018 use a = `mi_dw_weight` = 1, which
  presumes a likelihood in nats of the data; with a fixed output sd the
  likelihood's scale is arbitrary and a sets how hard unused latents are
  pruned); the KL schedule scales beta (`kl_weight`).

  Args:
    params: the model's 'params' collection.
    batch: 'ecg' [batch, 600, 12] float32 (mV), optional 'mask' [batch]
      float32 (1 = real row, 0 = padding).
    rng: key of the 'sample' stream (reparameterisation noise).
    model: a `vae.VAE` (any preset).
    model_state: its non-parameter variables (`{}` or None: none).
    beta: weight of the KL term (32 in the paper).
    sample: draw z from the posterior (False: z = mu).
    nan_fill: replaces NaNs in the decoder outputs, as ecgxai.
    mu_clip: bound on |mu| inside the KL.
    sd_clip: bounds on the posterior sd inside the KL.
    fixed_sd: if > 0, the likelihood uses this output sd (mV) instead of the
      decoder's sd head: a scaled MSE. The learned-sd likelihood of the paper
      first shrinks the sd where the beat is flat and learns the mean slowly;
      short CPU runs (configs/demo.py) fit the mean far sooner this way.
    kl_schedule: 'constant', 'linear' or 'cyclical' (`kl_weight`).
    kl_warmup_steps: the schedule's ramp or cycle length in steps.
    objective: 'beta_vae' (beta * KL) or 'beta_tcvae' (MI + beta * TC +
      dimension-wise KL).
    dataset_size: N of the beta-TC-VAE estimator (the training loop fills it
      from the data when 0).
    mi_dw_weight: beta-TC-VAE's weight of the MI and dimension-wise KL terms
      (Chen et al.'s alpha = gamma).
    step: the optimizer step (the training loop passes it).

  Returns:
    `(loss, (metrics, model_state))`: scalar loss; metrics 'nll', 'kl'
    (summed over latents), 'mse' (per sample), 'recon_sd' and 'post_sd'
    (mean sds), 'kl_weight', and for beta-TC-VAE 'mi', 'tc', 'dw_kl', all
    mask-weighted means over the batch; the VAE has no mutable state, so
    `model_state` comes back unchanged.

  Raises:
    ValueError: for an unknown objective or schedule, or a beta-TC-VAE
      without a dataset size.
  """
  if objective not in VAE_OBJECTIVES:
    raise ValueError(f'Unknown loss.objective {objective!r}; known: '
                     f'{", ".join(VAE_OBJECTIVES)}.')
  weight = kl_weight(step, beta, schedule=kl_schedule,
                     warmup_steps=kl_warmup_steps)
  model_state = dict(model_state or {})
  x = batch['ecg']
  mask = _batch_mask(batch)
  _, aux = model.apply(
      {'params': params, **model_state}, x, sample=sample,
      rngs={'sample': rng},
  )
  nll = gaussian_nll(x, aux['recon_mean'], _output_sd(aux, fixed_sd),
                     nan_fill=nan_fill)
  kl = jnp.sum(
      gaussian_kl(aux['mu'], aux['sd'], mu_clip=mu_clip, sd_clip=sd_clip),
      axis=1,
  )
  mse = jnp.mean(
      jnp.square(x - aux['recon_mean']).reshape(x.shape[0], -1), axis=1
  )
  mean_nll = _masked_mean(nll, mask)
  mean_kl = _masked_mean(kl, mask)
  per_row = lambda v: jnp.mean(v.reshape(v.shape[0], -1), axis=1)  # noqa: E731
  metrics = dict(
      nll=mean_nll,
      kl=mean_kl,
      mse=_masked_mean(mse, mask),
      recon_sd=_masked_mean(per_row(aux['recon_sd']), mask),
      post_sd=_masked_mean(per_row(aux['sd']), mask),
      kl_weight=weight,
  )
  if objective == 'beta_tcvae':
    if dataset_size <= 0:
      raise ValueError('loss.objective=beta_tcvae needs loss.dataset_size '
                       '(the number of training records).')
    parts = tc_decomposition(aux['z'], aux['mu'], aux['sd'], mask,
                             dataset_size)
    metrics.update(parts)
    loss = (mean_nll + mi_dw_weight * (parts['mi'] + parts['dw_kl'])
            + weight * parts['tc'])
  else:
    loss = mean_nll + weight * mean_kl
  return loss, (metrics, model_state)


def vae_eval(
    params: Params,
    batch: Batch,
    *,
    model: nn.Module,
    model_state: ModelState | None = None,
    beta: float = 32.0,
    sample: bool = True,
    nan_fill: float = NAN_FILL,
    mu_clip: float = MU_CLIP,
    sd_clip: tuple[float, float] = SD_CLIP,
    fixed_sd: float = 0.0,
    **unused_training_settings: Any,
) -> dict[str, jax.Array]:
  """Per-example VAE evaluation with z = mu (deterministic).

  The reported 'loss' is NLL + beta * KL with the full beta (no schedule);
  the training-only settings (`kl_schedule`, `objective`, ...) are ignored.

  Args:
    params: the model's 'params' collection.
    batch: 'ecg' [batch, 600, 12] float32 (mV); the loop handles 'mask'.
    model: a `vae.VAE`.
    model_state: its non-parameter variables (`{}` or None: none).
    beta: KL weight of the reported 'loss'.
    sample: ignored (evaluation decodes z = mu); accepted so that the loss
      settings can be passed to both functions.
    nan_fill: replaces NaNs in the decoder outputs.
    mu_clip: bound on |mu| inside the KL.
    sd_clip: bounds on the posterior sd inside the KL.
    fixed_sd: if > 0, the likelihood uses this output sd (mV) instead of the
      decoder's sd head: a scaled MSE. The learned-sd likelihood of the paper
      first shrinks the sd where the beat is flat and learns the mean slowly;
      short CPU runs (configs/demo.py) fit the mean far sooner this way.

  Returns:
    dict of per-example float32 arrays: 'loss', 'nll', 'kl', 'mse' [batch];
    'kl_per_dim', 'mu', 'mu_sq' [batch, latents] (their means give the
    per-dimension KL and Var(mu) = E[mu^2] - E[mu]^2); 'x', 'x_sq'
    [batch, 600, 12] (their means give the data variance of R^2).
  """
  del sample
  x = batch['ecg']
  _, aux = model.apply({'params': params, **(model_state or {})}, x,
                       sample=False)
  nll = gaussian_nll(x, aux['recon_mean'], _output_sd(aux, fixed_sd),
                     nan_fill=nan_fill)
  kl_per_dim = gaussian_kl(
      aux['mu'], aux['sd'], mu_clip=mu_clip, sd_clip=sd_clip
  )
  kl = jnp.sum(kl_per_dim, axis=1)
  mse = jnp.mean(
      jnp.square(x - aux['recon_mean']).reshape(x.shape[0], -1), axis=1
  )
  mu = aux['mu'].astype(jnp.float32)
  return dict(
      loss=nll + beta * kl,
      nll=nll,
      kl=kl,
      mse=mse,
      kl_per_dim=kl_per_dim,
      mu=mu,
      mu_sq=jnp.square(mu),
      x=x.astype(jnp.float32),
      x_sq=jnp.square(x.astype(jnp.float32)),
  )


def vae_summarize(
    means: Mapping[str, Any],
    collected: Mapping[str, np.ndarray] | None = None,
    *,
    var_threshold: float = 0.01,
    kl_threshold: float = 0.01,
) -> dict[str, float]:
  """Scalars from the eval means of `vae_eval`.

  Active units (Burda et al. 2016): latents whose posterior mean varies over
  the data, Var_x(E[z | x]) > `var_threshold`; also the count with mean KL >
  `kl_threshold` nats.

  Args:
    means: dataset means of `vae_eval`'s outputs ('mse', 'nll', 'kl',
      'kl_per_dim' [latents], 'mu' [latents], 'mu_sq' [latents], ...).
    collected: unused (the VAE task collects nothing).
    var_threshold: variance above which a latent counts as active.
    kl_threshold: mean KL (nats) above which a latent counts as active.

  Returns:
    {'mse', 'nll', 'kl', 'r2', 'active_units', 'active_units_kl',
    'kl_dim_00', 'kl_dim_01', ...}: floats. 'r2' = 1 - mse / Var(x), the
    variance of the data around its per-(sample, lead) mean: the share of
    the held-out ECGs' variance the reconstruction (z = mu) explains.
  """
  del collected
  kl_per_dim = np.asarray(means['kl_per_dim'], np.float64)
  mu = np.asarray(means['mu'], np.float64)
  var_mu = np.asarray(means['mu_sq'], np.float64) - np.square(mu)
  out = {k: float(means[k]) for k in ('mse', 'nll', 'kl') if k in means}
  if 'x' in means and 'x_sq' in means and 'mse' in means:
    var_x = np.mean(np.asarray(means['x_sq'], np.float64)
                    - np.square(np.asarray(means['x'], np.float64)))
    out['r2'] = float(1.0 - means['mse'] / var_x)
  out['active_units'] = float(np.sum(var_mu > var_threshold))
  out['active_units_kl'] = float(np.sum(kl_per_dim > kl_threshold))
  for i, value in enumerate(kl_per_dim):
    out[f'kl_dim_{i:02d}'] = float(value)
  return out


# ------------------------------------------------ supervised heads ---
# 'classify', 'regress' and 'cox' share one model call (`_apply`) and the
# model inputs (`model_inputs`); they differ in the head's loss and in what
# the eval split is summarised by.


def model_inputs(
    batch: Batch, *, extra_keys: Sequence[str] = (), **unused: Any
) -> tuple[jax.Array, jax.Array | None]:
  """The positional inputs `(x, extra)` of a ResNet-like model.

  Args:
    batch: 'ecg' [batch, time, leads] float32 and the `extra_keys`, each
      [batch] or [batch, k] (bool, int or float).
    extra_keys: batch keys joined, in this order, into `extra` (e.g.
      ('age', 'sex')); the model's `num_extra` must equal their total width.
    **unused: the other loss settings (the loop passes them all).

  Returns:
    `(x, extra)`: `batch['ecg']` and [batch, E] float32, or None when
    `extra_keys` is empty.

  Raises:
    KeyError: if the batch lacks one of `extra_keys`.
  """
  del unused
  x = batch['ecg']
  if not extra_keys:
    return x, None
  columns = []
  for key in extra_keys:
    if key not in batch:
      raise KeyError(
          f'The batch has no {key!r} (loss.extra_keys); add it to '
          f'config.data.extra_keys. Batch keys: {sorted(batch)}.'
      )
    value = jnp.asarray(batch[key]).astype(jnp.float32)
    columns.append(value.reshape(value.shape[0], -1))
  return x, jnp.concatenate(columns, axis=-1)


def _apply(
    model: nn.Module,
    params: Params,
    model_state: ModelState | None,
    batch: Batch,
    *,
    train: bool,
    rng: jax.Array | None = None,
    extra_keys: Sequence[str] = (),
) -> tuple[jax.Array, dict[str, Any]]:
  """`(outputs [batch, K] float32, new model state)` of a ResNet-like model.

  Training mode uses batch statistics (of the global batch: under jit on a
  mesh the batch axis is global) and returns the updated 'batch_stats';
  evaluation uses the running statistics and returns the state unchanged.
  """
  model_state = dict(model_state or {})
  x, extra = model_inputs(batch, extra_keys=extra_keys)
  variables = {'params': params, **model_state}
  rngs = {'dropout': rng} if rng is not None else {}
  if train and model_state:
    (out, _), new_state = model.apply(
        variables, x, extra, train=True, rngs=rngs,
        mutable=list(model_state),
    )
    return out.astype(jnp.float32), dict(new_state)
  out, _ = model.apply(variables, x, extra, train=train, rngs=rngs)
  return out.astype(jnp.float32), model_state


def _targets(batch: Batch, target_key: str, num_outputs: int) -> jax.Array:
  """`batch[target_key]` as [batch, num_outputs] float32."""
  if target_key not in batch:
    raise KeyError(
        f'The batch has no target {target_key!r} (loss.target_key); add it '
        f'to config.data.extra_keys. Batch keys: {sorted(batch)}.'
    )
  y = jnp.asarray(batch[target_key]).astype(jnp.float32)
  y = y.reshape(y.shape[0], -1)
  if y.shape[1] != num_outputs:
    raise ValueError(
        f'Target {target_key!r} has {y.shape[1]} columns but the model '
        f'outputs {num_outputs}; set model.num_outputs={y.shape[1]}.'
    )
  return y


def classify_loss(
    params: Params,
    batch: Batch,
    rng: jax.Array,
    *,
    model: nn.Module,
    model_state: ModelState | None = None,
    target_key: str = 'labels',
    extra_keys: Sequence[str] = (),
) -> tuple[jax.Array, tuple[dict[str, jax.Array], dict[str, Any]]]:
  """Sigmoid binary cross-entropy, mean over labels and real rows.

  Multi-label (one independent sigmoid per label, as Ribeiro et al. 2020)
  or binary (K = 1).

  Args:
    params: the model's 'params'.
    batch: 'ecg' [batch, time, 12], `target_key` [batch, K] or [batch]
      (bool or 0/1 float), 'mask' [batch], and the `extra_keys`.
    rng: key of the 'dropout' stream.
    model: ResNet-like module with K = `num_outputs` logits.
    model_state: `{'batch_stats': ...}` or `{}`.
    target_key: batch key of the labels.
    extra_keys: batch keys joined into the model's `extra` input.

  Returns:
    `(loss, (metrics, new_model_state))`; metrics 'bce' and 'accuracy'
    (logit > 0 vs label, mean over labels), mask-weighted.
  """
  logits, new_state = _apply(model, params, model_state, batch, train=True,
                             rng=rng, extra_keys=extra_keys)
  y = _targets(batch, target_key, logits.shape[1])
  mask = _batch_mask(batch)
  bce = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, y), axis=1)
  correct = jnp.mean(((logits > 0) == (y > 0.5)).astype(jnp.float32), axis=1)
  loss = _masked_mean(bce, mask)
  return loss, (dict(bce=loss, accuracy=_masked_mean(correct, mask)),
                new_state)


def classify_eval(
    params: Params,
    batch: Batch,
    *,
    model: nn.Module,
    model_state: ModelState | None = None,
    target_key: str = 'labels',
    extra_keys: Sequence[str] = (),
) -> dict[str, jax.Array]:
  """Per-example BCE and accuracy (averaged), logits and targets (collected).

  Returns:
    'loss', 'accuracy' [batch]; 'logits', 'targets' [batch, K] float32.
  """
  logits, _ = _apply(model, params, model_state, batch, train=False,
                     extra_keys=extra_keys)
  y = _targets(batch, target_key, logits.shape[1])
  return dict(
      loss=jnp.mean(optax.sigmoid_binary_cross_entropy(logits, y), axis=1),
      accuracy=jnp.mean(
          ((logits > 0) == (y > 0.5)).astype(jnp.float32), axis=1),
      logits=logits,
      targets=y,
  )


def classify_summarize(
    means: Mapping[str, Any], collected: Mapping[str, np.ndarray]
) -> dict[str, float]:
  """AUROC per label and macro AUROC over the whole eval split.

  Args:
    means: split means of `classify_eval`'s 'loss' and 'accuracy'.
    collected: 'logits' and 'targets' [n, K] of every real eval record.

  Returns:
    'auroc' (mean over labels with both classes; NaN if none), 'bce',
    'prevalence' (mean target), calibration of the predicted probabilities
    ('brier', 'ece', 'calibration_intercept', 'calibration_slope'; means
    over labels for K > 1; `statistics.binary_calibration`), and for K > 1
    'auroc_dim_00'.. per label.
  """
  # pylint: disable-next=g-import-not-at-top
  from factorecg_jax.analysis import statistics
  labels = np.asarray(collected['targets']) > 0.5
  scores = np.asarray(collected['logits'], np.float64)
  out = {'auroc': float(statistics.macro_auroc(labels, scores)),
         'prevalence': float(labels.mean())}
  if 'loss' in means:
    out['bce'] = float(means['loss'])
  # Calibration of the predicted probabilities (mean over labels for K > 1).
  probs = 1.0 / (1.0 + np.exp(-scores))
  cal = [statistics.binary_calibration(labels[:, k], probs[:, k])
         for k in range(labels.shape[1])]
  for key in ('brier', 'ece', 'intercept', 'slope'):
    values = np.array([c[key] for c in cal], np.float64)
    name = 'calibration_' + key if key in ('intercept', 'slope') else key
    out[name] = (float(np.nanmean(values)) if np.isfinite(values).any()
                 else float('nan'))
  if labels.shape[1] > 1:
    for k in range(labels.shape[1]):
      out[f'auroc_dim_{k:02d}'] = statistics.auroc(labels[:, k], scores[:, k])
  return out


def _scale(values: Sequence[float] | float | None, default: float):
  return jnp.asarray(default if values is None else values, jnp.float32)


def _observed(y: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`(y with NaNs set to 0, 1.0 where y was finite)`: missing targets."""
  seen = jnp.isfinite(y)
  return jnp.where(seen, y, 0.0), seen.astype(jnp.float32)


def regress_loss(
    params: Params,
    batch: Batch,
    rng: jax.Array,
    *,
    model: nn.Module,
    model_state: ModelState | None = None,
    target_key: str = 'ef',
    extra_keys: Sequence[str] = (),
    target_mean: Sequence[float] | float | None = None,
    target_std: Sequence[float] | float | None = None,
    target_names: Sequence[str] | None = None,
) -> tuple[jax.Array, tuple[dict[str, jax.Array], dict[str, Any]]]:
  """MSE on standardised targets, `(y - target_mean) / target_std`.

  Missing targets (NaN, e.g. a PTB-XL+ or DeepFake-ECG measurement the
  algorithm did not report) weigh nothing: the loss is the mean over the
  observed (row, target) pairs of real rows; with every target observed it
  is the plain mean over targets and rows.

  Args:
    params, batch, rng, model, model_state, extra_keys: as `classify_loss`;
      `batch[target_key]` [batch, K] or [batch] float in physical units
      (e.g. EF in %), NaN where missing.
    target_key: batch key of the targets.
    target_mean: [K] (or one) mean the targets are centred by (None: 0).
    target_std: [K] (or one) scale (None: 1); the model predicts the
      standardised target.
    target_names: [K] names (used by `regress_eval` only).

  Returns:
    `(loss, (metrics, new_model_state))`; metrics 'mse' (standardised).
  """
  del target_names
  out, new_state = _apply(model, params, model_state, batch, train=True,
                          rng=rng, extra_keys=extra_keys)
  y, seen = _observed(_targets(batch, target_key, out.shape[1]))
  z = (y - _scale(target_mean, 0.0)) / _scale(target_std, 1.0)
  weight = seen * _batch_mask(batch)[:, None]
  loss = jnp.sum(weight * jnp.square(out - z)) / jnp.maximum(
      jnp.sum(weight), 1.0)
  return loss, (dict(mse=loss), new_state)


def regress_eval(
    params: Params,
    batch: Batch,
    *,
    model: nn.Module,
    model_state: ModelState | None = None,
    target_key: str = 'ef',
    extra_keys: Sequence[str] = (),
    target_mean: Sequence[float] | float | None = None,
    target_std: Sequence[float] | float | None = None,
    target_names: Sequence[str] | None = None,
) -> dict[str, jax.Array]:
  """Standardised squared error (averaged); predictions and targets in
  physical units (collected).

  With `target_names` ([K] strings, e.g. `simulator.MEASURE_NAMES`) it also
  returns, per target, `mae_<name>` [batch, 2]: the absolute error in
  physical units (0 where the target is missing) and 1.0 where it is
  observed. The loop averages them over the split, and `regress_summarize`
  turns each pair into that target's MAE over its observed rows, reported as
  'eval/mae_<name>' (the loop gives a summary only the means and collected
  arrays, so the names travel as output keys).

  Returns:
    'loss' [batch] (mean over observed targets); 'predictions', 'targets'
    [batch, K] float32 (targets NaN where missing); 'mae_<name>' [batch, 2].

  Raises:
    ValueError: if `target_names` does not have K names.
  """
  out, _ = _apply(model, params, model_state, batch, train=False,
                  extra_keys=extra_keys)
  y_raw = _targets(batch, target_key, out.shape[1])
  y, seen = _observed(y_raw)
  mean, std = _scale(target_mean, 0.0), _scale(target_std, 1.0)
  pred = out * std + mean
  sq = seen * jnp.square(out - (y - mean) / std)
  result = dict(
      loss=jnp.sum(sq, axis=1) / jnp.maximum(jnp.sum(seen, axis=1), 1.0),
      predictions=pred,
      targets=y_raw,
  )
  if target_names:
    if len(target_names) != out.shape[1]:
      raise ValueError(
          f'loss.target_names has {len(target_names)} names but the model '
          f'outputs {out.shape[1]} targets.'
      )
    abs_err = seen * jnp.abs(pred - y)
    for k, name in enumerate(target_names):
      result[f'mae_{name}'] = jnp.stack([abs_err[:, k], seen[:, k]], axis=1)
  return result


def regress_summarize(
    means: Mapping[str, Any], collected: Mapping[str, np.ndarray]
) -> dict[str, float]:
  """MAE, RMSE and R^2 in physical units over the whole eval split.

  Missing (NaN) targets are left out of every statistic of their column.

  Returns:
    'mae', 'rmse', 'r2' (means over targets) and, for K > 1,
    'mae_dim_00'.. and 'r2_dim_00'.. per target; with `target_names`
    (`regress_eval`), also 'mae_<name>' per target, the same value as
    'mae_dim_XX' under a readable name (e.g. 'mae_qrs_ms', in ms).
  """
  pred = np.asarray(collected['predictions'], np.float64)
  y = np.asarray(collected['targets'], np.float64)
  err = pred - y
  with np.errstate(invalid='ignore', divide='ignore'), \
      warnings.catch_warnings():
    warnings.simplefilter('ignore', RuntimeWarning)  # all-NaN columns
    mae = np.nanmean(np.abs(err), axis=0)
    sse = np.nansum(err**2, axis=0)
    sst = np.nansum((y - np.nanmean(y, axis=0))**2, axis=0)
    sst = np.where(np.isfinite(y).any(axis=0), sst, np.nan)
    r2 = 1.0 - sse / sst
    out = {'mae': float(np.nanmean(mae)),
           'rmse': float(np.sqrt(np.nanmean(err**2))),
           'r2': float(np.nanmean(r2))}
  if y.shape[1] > 1:
    for k in range(y.shape[1]):
      out[f'mae_dim_{k:02d}'] = float(mae[k])
      out[f'r2_dim_{k:02d}'] = float(r2[k])
  # Per-target MAE under its name: mean |error| over observed rows, from the
  # split means of regress_eval's [abs error, observed] pairs.
  for key, value in means.items():
    value = np.asarray(value, np.float64)
    if key.startswith('mae_') and value.shape == (2,):
      out[key] = float(value[0] / value[1]) if value[1] > 0 else float('nan')
  return out


def _risk(out: jax.Array) -> jax.Array:
  if out.shape[1] != 1:
    raise ValueError(
        f'The Cox head needs one output (log relative hazard), got '
        f'{out.shape[1]}; set model.num_outputs=1.'
    )
  return out[:, 0]


def cox_loss(
    params: Params,
    batch: Batch,
    rng: jax.Array,
    *,
    model: nn.Module,
    model_state: ModelState | None = None,
    extra_keys: Sequence[str] = (),
) -> tuple[jax.Array, tuple[dict[str, jax.Array], dict[str, Any]]]:
  """Negative Cox partial likelihood (Breslow ties) of the whole batch.

  `survival_loss.cox_loss(risk, batch['time'], batch['event'], mask)`;
  under jit on the mesh the batch is the global one, so the risk sets span
  every device: the global-batch partial likelihood, not a per-device
  approximation.

  Args:
    params, rng, model, model_state, extra_keys: as `classify_loss`.
    batch: 'ecg', 'time' [batch] years, 'event' [batch] bool, 'mask'.

  Returns:
    `(loss, (metrics, new_model_state))`; metrics 'event_rate' (share of
    real rows with an event).
  """
  out, new_state = _apply(model, params, model_state, batch, train=True,
                          rng=rng, extra_keys=extra_keys)
  mask = _batch_mask(batch)
  event = jnp.asarray(batch['event']).astype(jnp.float32)
  loss = survival_loss.cox_loss(_risk(out), batch['time'], event, mask)
  return loss, (dict(event_rate=_masked_mean(event, mask)), new_state)


def cox_eval(
    params: Params,
    batch: Batch,
    *,
    model: nn.Module,
    model_state: ModelState | None = None,
    extra_keys: Sequence[str] = (),
) -> dict[str, jax.Array]:
  """The predicted log relative hazard 'risk' [batch] (collected)."""
  out, _ = _apply(model, params, model_state, batch, train=False,
                  extra_keys=extra_keys)
  return dict(risk=_risk(out))


# Horizon of the time-dependent AUROC of `cox_summarize` (1-year mortality).
COX_HORIZON_YEARS = 1.0


def cox_summarize(
    means: Mapping[str, Any], collected: Mapping[str, np.ndarray]
) -> dict[str, float]:
  """C-index, whole-split partial likelihood and 1-year AUROC.

  The 1-year cumulative/dynamic AUROC (Uno et al. 2007) weights cases by
  the Kaplan-Meier censoring distribution of the eval split itself (the
  loop has no training labels at hand); NaN when it cannot be computed
  (no case or control, scikit-survival missing).

  Args:
    means: unused ('risk' is collected, not averaged).
    collected: 'risk', 'time', 'event' [n] of every real eval record.

  Returns:
    'c_index' (Harrell), 'loss' (the Breslow partial likelihood per event
    over the whole split), 'auroc_1y', 'event_rate', 'calibration_slope'
    (`statistics.cox_calibration_slope`).
  """
  del means
  # pylint: disable-next=g-import-not-at-top
  from factorecg_jax.analysis import statistics
  risk = np.asarray(collected['risk'], np.float64)
  time = np.asarray(collected['time'], np.float64)
  event = np.asarray(collected['event']).astype(bool)
  out = {
      'c_index': statistics.concordance_index(time, risk, event),
      'loss': float(survival_loss.cox_loss(risk, time, event)),
      'event_rate': float(event.mean()),
      # A Cox model refitted on the predicted risk alone: 1 = calibrated.
      'calibration_slope': statistics.cox_calibration_slope(
          time, risk, event),
  }
  # Follow-up past the horizon only marks a control (weighted 1/G(horizon)),
  # so test times are cut just beyond it: the AUROC is unchanged and the
  # censoring survival G never reaches the zero that a censored longest
  # follow-up gives it.
  cut = 2.0 * COX_HORIZON_YEARS
  try:
    out['auroc_1y'] = statistics.time_dependent_auroc(
        time, event, np.minimum(time, cut), event & (time <= cut), risk,
        horizon=COX_HORIZON_YEARS)
  except (ImportError, ValueError):
    out['auroc_1y'] = float('nan')
  return out


TASKS = {
    'vae': Task(
        loss_fn=vae_loss, eval_fn=vae_eval, summarize_fn=vae_summarize
    ),
    'classify': Task(
        loss_fn=classify_loss, eval_fn=classify_eval,
        summarize_fn=classify_summarize,
        collect=('logits', 'targets', 'index'), inputs_fn=model_inputs,
    ),
    'regress': Task(
        loss_fn=regress_loss, eval_fn=regress_eval,
        summarize_fn=regress_summarize,
        collect=('predictions', 'targets', 'index'), inputs_fn=model_inputs,
    ),
    'cox': Task(
        loss_fn=cox_loss, eval_fn=cox_eval, summarize_fn=cox_summarize,
        collect=('risk', 'time', 'event', 'index'), inputs_fn=model_inputs,
    ),
}
