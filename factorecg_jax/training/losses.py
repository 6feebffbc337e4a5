"""Task losses and evaluations; `TASKS` maps a config's `task` to one.

A task supplies three pure functions (docs/CONTRACTS.md):

* `loss_fn(params, batch, rng, *, model, **kw) -> (loss, metrics)`, a
  mask-weighted mean over the batch (padded rows weigh nothing);
* `eval_fn(params, batch, *, model, **kw) -> {name: [batch, ...]}`,
  per-example values the loop averages over real rows;
* `summarize_fn(means) -> {name: scalar}` on those averages.

The loop passes `config.loss` as `**kw` to both `loss_fn` and `eval_fn`.

VAE (FactorECG, van de Leur et al. 2022; ecgxai 0.1.1 `utils/loss.py` with
`train_factorecg_vae.py`): loss = E_batch[NLL] + beta * E_batch[KL], with
NLL the Gaussian negative log-likelihood of the ECG under the decoder's
per-sample mean and sd, summed over the 600 x 12 samples, and KL the
divergence of N(mu, sd^2) from N(0, I), summed over the latents.
"""

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Batch = Mapping[str, jax.Array]
Params = Any

# ecgxai's clipping of the posterior before the KL and its NaN filler.
MU_CLIP = 100.0
SD_CLIP = (1e-6, 100.0)
NAN_FILL = 50.0


class Task(NamedTuple):
  """The functions a task gives the training loop (see module docstring)."""

  loss_fn: Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
  eval_fn: Callable[..., dict[str, jax.Array]]
  summarize_fn: Callable[[dict[str, np.ndarray]], dict[str, float]] | None


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


def vae_loss(
    params: Params,
    batch: Batch,
    rng: jax.Array,
    *,
    model: nn.Module,
    beta: float = 32.0,
    sample: bool = True,
    nan_fill: float = NAN_FILL,
    mu_clip: float = MU_CLIP,
    sd_clip: tuple[float, float] = SD_CLIP,
    fixed_sd: float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """FactorECG training loss: mean NLL + beta * mean KL over real rows.

  With an all-ones mask this is ecgxai's
  `CombinedLoss([GaussianVAEReconLoss('mean'), KLDivergence('mean',
  std_is_log=False)], ['+'], [1, beta])`.

  Args:
    params: the model's 'params' collection.
    batch: 'ecg' [batch, 600, 12] float32 (mV), optional 'mask' [batch]
      float32 (1 = real row, 0 = padding).
    rng: key of the 'sample' stream (reparameterisation noise).
    model: a `vae.VAE` (any preset).
    beta: weight of the KL term (32 in the paper).
    sample: draw z from the posterior (False: z = mu).
    nan_fill: replaces NaNs in the decoder outputs, as ecgxai.
    mu_clip: bound on |mu| inside the KL.
    sd_clip: bounds on the posterior sd inside the KL.
    fixed_sd: if > 0, the likelihood uses this output sd (mV) instead of the
      decoder's sd head: a scaled MSE. The learned-sd likelihood of the paper
      first shrinks the sd where the beat is flat and learns the mean slowly;
      short CPU runs (configs/demo.py) fit the mean far sooner this way.

  Returns:
    `(loss, metrics)`: scalar loss; metrics 'nll', 'kl' (summed over
    latents), 'mse' (per sample), 'recon_sd' and 'post_sd' (mean sds), all
    mask-weighted means over the batch.
  """
  x = batch['ecg']
  mask = _batch_mask(batch)
  _, aux = model.apply(
      {'params': params}, x, sample=sample, rngs={'sample': rng}
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
  loss = mean_nll + beta * mean_kl
  per_row = lambda v: jnp.mean(v.reshape(v.shape[0], -1), axis=1)  # noqa: E731
  metrics = dict(
      nll=mean_nll,
      kl=mean_kl,
      mse=_masked_mean(mse, mask),
      recon_sd=_masked_mean(per_row(aux['recon_sd']), mask),
      post_sd=_masked_mean(per_row(aux['sd']), mask),
  )
  return loss, metrics


def vae_eval(
    params: Params,
    batch: Batch,
    *,
    model: nn.Module,
    beta: float = 32.0,
    sample: bool = True,
    nan_fill: float = NAN_FILL,
    mu_clip: float = MU_CLIP,
    sd_clip: tuple[float, float] = SD_CLIP,
    fixed_sd: float = 0.0,
) -> dict[str, jax.Array]:
  """Per-example VAE evaluation with z = mu (deterministic).

  Args:
    params: the model's 'params' collection.
    batch: 'ecg' [batch, 600, 12] float32 (mV); the loop handles 'mask'.
    model: a `vae.VAE`.
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
  _, aux = model.apply({'params': params}, x, sample=False)
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
    var_threshold: variance above which a latent counts as active.
    kl_threshold: mean KL (nats) above which a latent counts as active.

  Returns:
    {'mse', 'nll', 'kl', 'r2', 'active_units', 'active_units_kl',
    'kl_dim_00', 'kl_dim_01', ...}: floats. 'r2' = 1 - mse / Var(x), the
    variance of the data around its per-(sample, lead) mean: the share of
    the held-out ECGs' variance the reconstruction (z = mu) explains.
  """
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


TASKS = {
    'vae': Task(
        loss_fn=vae_loss, eval_fn=vae_eval, summarize_fn=vae_summarize
    ),
}
