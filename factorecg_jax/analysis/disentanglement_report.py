"""All disentanglement results of a trained VAE, written to its run directory.

`evaluate_run` encodes simulated records with a given encoder, computes the
(codes, factors) metrics, the intervention metrics against the simulator and
the factor interpretation, and writes

  <run_dir>/disentanglement/metrics.json   scores, names, settings, timings
  <run_dir>/disentanglement/metrics.md     the same as markdown tables
  <run_dir>/disentanglement/matrices.npz   MI, importance, SAP, rho matrices
  <run_dir>/disentanglement/*.png          heatmaps

It knows no training code: the caller (main.py --mode=evaluate) restores the
model and passes an encoder, e.g. `make_encode_fn(model.apply, variables)`.
"""

from collections.abc import Callable, Mapping, Sequence
import inspect
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from factorecg_jax import console
from factorecg_jax.analysis import disentanglement
from factorecg_jax.analysis import interpretation
from factorecg_jax.analysis import interventions
from factorecg_jax.data import simulator

Array = np.ndarray
EncodeFn = Callable[[Array], Any]

SCORE_LABELS = {
    'mig': 'MIG',
    'dci_disentanglement': 'DCI disentanglement',
    'dci_completeness': 'DCI completeness',
    'dci_informativeness_train': 'DCI informativeness (train)',
    'dci_informativeness_test': 'DCI informativeness (test)',
    'sap': 'SAP',
    'modularity': 'Modularity',
    'explicitness_train': 'Explicitness (train)',
    'explicitness_test': 'Explicitness (test)',
    'active_units': 'Active units',
    'gaussian_total_correlation': 'Gaussian total correlation (nats)',
    'beta_vae_train_accuracy': 'BetaVAE score (train)',
    'beta_vae_eval_accuracy': 'BetaVAE score (eval)',
    'factor_vae_train_accuracy': 'FactorVAE score (train)',
    'factor_vae_eval_accuracy': 'FactorVAE score (eval)',
    'factor_vae_num_active_dims': 'FactorVAE kept dimensions',
}


def make_encode_fn(
    apply_fn: Callable[..., Any],
    variables: Any,
    *,
    method: str = 'encode',
    batch_size: int = 512,
    preprocess: Callable[[jax.Array], jax.Array] | None = None,
) -> Callable[[Array], tuple[Array, Array]]:
  """A batched, jitted `x -> (mu, sd)` from a model's encode method.

  Batches are padded to `batch_size`, so the encoder compiles once.

  Args:
    apply_fn: e.g. `vae.VAE(...).apply`.
    variables: `{'params': ...}` (and any other collections).
    method: the model method returning (mu, sd) or a dict with 'mu'/'sd'.
    batch_size: rows per call.
    preprocess: optional input transform inside the jit (e.g. the data
      pipeline's normalisation).

  Returns:
    encode(x [n, ...]) -> (mu [n, D], sd [n, D]) float32 numpy.
  """
  @jax.jit
  def _encode(v, x):
    if preprocess is not None:
      x = preprocess(x)
    out = apply_fn(v, x, method=method)
    if isinstance(out, Mapping):
      return out['mu'], out.get('sd', jnp.zeros_like(out['mu']))
    return out[0], out[1]

  def encode(x):
    x = np.asarray(x, np.float32)
    mus, sds = [], []
    for start in range(0, len(x), batch_size):
      chunk = x[start:start + batch_size]
      pad = batch_size - len(chunk)
      if pad:
        chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:],
                                                chunk.dtype)])
      mu, sd = _encode(variables, chunk)
      mus.append(np.asarray(mu)[:batch_size - pad])
      sds.append(np.asarray(sd)[:batch_size - pad])
    return np.concatenate(mus), np.concatenate(sds)

  return encode


def _split_output(out: Any) -> tuple[Array, Array | None]:
  if isinstance(out, Mapping):
    return np.asarray(out['mu']), (None if out.get('sd') is None
                                   else np.asarray(out['sd']))
  if isinstance(out, (tuple, list)):
    return np.asarray(out[0]), np.asarray(out[1])
  return np.asarray(out), None


def _accepted(fn: Callable[..., Any], kwargs: Mapping[str, Any]):
  """The entries of kwargs that fn takes (the two scores differ a little)."""
  names = inspect.signature(fn).parameters
  return {k: v for k, v in kwargs.items() if k in names}


def _simulate(seed: int, split: int, n: int, mode: str) -> dict[str, Any]:
  key = jax.random.fold_in(jax.random.key(seed), split)
  return simulator.simulate_records(key, n, mode=mode)


def _markdown(scores, result, settings) -> str:
  lines = ['# Disentanglement', '', '| metric | value |', '|---|---|']
  for k, v in scores.items():
    if not k.startswith('time/'):
      lines.append(f'| {SCORE_LABELS.get(k, k)} | {v:.4f} |')
  lines += ['', '## Factor names', '',
            '| code | strongest association | Spearman rho |', '|---|---|---|']
  for b in result['best']:
    lines.append(f"| {b['code']} | {b['label']} | {b['rho']:.2f} |")
  if result.get('encoded'):
    lines += ['', '## What the factors carry of each true factor', '',
              'Held-out R^2 of each true factor regressed on the active '
              'codes (fitted on the training records).', '',
              '| true factor | linear (OLS) | gradient-boosted trees |',
              '|---|---|---|']
    for r in result['encoded']:
      lines.append(f"| {r['label']} | {r['r2_linear']:.2f} | "
                   f"{r['r2_boosted']:.2f} |")
  lines += ['', '## Settings', '']
  lines += [f'- {k}: {v}' for k, v in settings.items()]
  return '\n'.join(lines) + '\n'


def _matrix_figure(matrix, row_labels, col_labels, path, title, cmap, vmin,
                   vmax, cbar_label):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  r, c = matrix.shape
  fig, ax = plt.subplots(figsize=(2.0 + 0.45 * c, 1.5 + 0.3 * r))
  im = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax, aspect='auto')
  ax.set_xticks(range(c), labels=list(col_labels), rotation=60, ha='right',
                fontsize=8)
  ax.set_yticks(range(r), labels=list(row_labels), fontsize=7)
  fig.colorbar(im, ax=ax, label=cbar_label, shrink=0.8)
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def evaluate_run(
    run_dir: str,
    *,
    encode_fn: EncodeFn,
    train_records: Mapping[str, Any] | None = None,
    test_records: Mapping[str, Any] | None = None,
    factor_names: Sequence[str] | None = None,
    num_train: int = 10_000,
    num_test: int = 5_000,
    mode: str = 'uniform',
    seed: int = 0,
    importance: str = 'lasso',
    factor_bins: int | None = disentanglement.NUM_BINS,
    interventions_enabled: bool = True,
    generator: tuple[interventions.SampleFn, interventions.RenderFn]
    | None = None,
    intervention_kwargs: Mapping[str, Any] | None = None,
    out_subdir: str = 'disentanglement',
) -> dict[str, Any]:
  """Computes and writes every disentanglement result of one encoder.

  Args:
    run_dir: run directory; results go to `<run_dir>/<out_subdir>/`.
    encode_fn: beats [n, 600, 12] (mV) -> mu [n, D], or (mu, sd), or a dict
      with 'mu' (and 'sd').
    train_records: dict with 'beat' [n, 600, 12], 'factors' [n, K] and
      optionally 'measurements' (simulator.simulate_records layout); default
      `num_train` simulated records (`mode`, seed stream 0).
    test_records: the same for the test split (default `num_test`, stream 1).
    factor_names: K factor keys (default the simulator's FACTOR_NAMES when
      K = 14, else 'v0', ...).
    num_train: simulated training records if none are given.
    num_test: simulated test records if none are given.
    mode: simulator factor sampler for simulated records and interventions.
    seed: seeds the simulated records and the interventions.
    importance: DCI importance mode (see `disentanglement.dci`).
    factor_bins: equal-frequency bins per factor.
    interventions_enabled: also compute BetaVAE and FactorVAE scores (tens
      of minutes on a CPU at the standard sizes; see `intervention_kwargs`).
    generator: (sample_factors, render) for the interventions; default the
      simulator. `render` output is passed to encode_fn as is, or its 'ecg'
      entry if it is a dict.
    intervention_kwargs: overrides of the standard settings, passed to both
      scores (e.g. {'num_train': 1000, 'num_eval': 500}).
    out_subdir: folder under run_dir.

  Returns:
    dict: 'scores' (flat floats, also in metrics.json), 'names' (one per
    active code), 'best', 'encoded' (held-out R^2 of each true factor from
    the active codes, `interpretation.encoded_r2`), 'paths' (written files).
  """
  out_dir = os.path.join(run_dir, out_subdir)
  os.makedirs(out_dir, exist_ok=True)
  if train_records is None:
    train_records = _simulate(seed, 0, num_train, mode)
  if test_records is None:
    test_records = _simulate(seed, 1, num_test, mode)
  f_train = np.asarray(train_records['factors'], np.float64)
  f_test = np.asarray(test_records['factors'], np.float64)
  if factor_names is None:
    factor_names = (list(simulator.FACTOR_NAMES)
                    if f_train.shape[1] == simulator.NUM_FACTORS
                    else [f'v{j}' for j in range(f_train.shape[1])])
  timings = {}

  t0 = time.perf_counter()
  console.info(f'  encoding {len(f_train)} + {len(f_test)} records')
  mu_train, sd_train = _split_output(encode_fn(train_records['beat']))
  mu_test, _ = _split_output(encode_fn(test_records['beat']))
  timings['encode'] = time.perf_counter() - t0

  t0 = time.perf_counter()
  console.info('  disentanglement metrics (MIG, DCI, SAP, modularity, ...)')
  scores, mats = disentanglement.compute_all_metrics(
      mu_train, f_train, mu_test, f_test, sd_train=sd_train,
      importance=importance, factor_bins=factor_bins, seed=seed)
  timings['metrics'] = time.perf_counter() - t0

  settings = dict(num_train=len(f_train), num_test=len(f_test),
                  importance=importance, factor_bins=factor_bins,
                  code_bins=disentanglement.NUM_BINS, mode=mode, seed=seed)
  if interventions_enabled:
    t0 = time.perf_counter()
    sample_factors, render = (generator if generator is not None
                              else interventions.simulator_generator(mode))

    def encode_obs(obs):
      x = obs['ecg'] if isinstance(obs, Mapping) else obs
      return _split_output(encode_fn(np.asarray(x)))[0]

    kw = dict(intervention_kwargs or {})
    key = jax.random.fold_in(jax.random.key(seed), 2)
    beta = interventions.beta_vae_score(
        jax.random.fold_in(key, 0), sample_factors, render, encode_obs,
        **_accepted(interventions.beta_vae_score, kw))
    factor = interventions.factor_vae_score(
        jax.random.fold_in(key, 1), sample_factors, render, encode_obs,
        **_accepted(interventions.factor_vae_score, kw))
    scores.update(
        beta_vae_train_accuracy=beta['train_accuracy'],
        beta_vae_eval_accuracy=beta['eval_accuracy'],
        factor_vae_train_accuracy=factor['train_accuracy'],
        factor_vae_eval_accuracy=factor['eval_accuracy'],
        factor_vae_num_active_dims=factor['num_active_dims'])
    settings.update(
        intervention_chance=1.0 / beta['num_factors'],
        **{f'intervention_{k}': v for k, v in kw.items()})
    timings['interventions'] = time.perf_counter() - t0

  t0 = time.perf_counter()
  result = interpretation.interpret_codes(
      mu_train, f_train, train_records.get('measurements'),
      factor_names=factor_names, active_mask=mats['active_mask'])
  paths = {}
  rows = [f'factor {c}' for c in result['codes']]
  paths['spearman'] = interpretation.plot_association_heatmap(
      result['rho'], rows, result['column_labels'],
      os.path.join(out_dir, 'spearman.png'),
      num_factor_columns=result['num_factor_columns'],
      title='Active factors vs ground truth and ECG measurements')
  factor_labels = [interpretation.FACTOR_LABELS.get(k, k)
                   for k in factor_names]
  code_labels = [f'factor {i}' for i in range(mu_train.shape[1])]
  paths['importance'] = _matrix_figure(
      mats['dci_importance'], code_labels, factor_labels,
      os.path.join(out_dir, 'dci_importance.png'),
      f'DCI importance ({importance})', 'viridis', 0.0, None, 'importance')
  paths['mutual_info'] = _matrix_figure(
      mats['mutual_info'] / np.maximum(mats['factor_entropy'], 1e-12),
      code_labels, factor_labels, os.path.join(out_dir, 'mutual_info.png'),
      'Normalised mutual information I(z; v) / H(v)', 'viridis', 0.0, 1.0,
      'I / H')
  timings['interpretation'] = time.perf_counter() - t0

  t0 = time.perf_counter()
  active = np.flatnonzero(mats['active_mask'])
  if not len(active):
    active = np.arange(mu_train.shape[1])
  result['encoded'] = interpretation.encoded_r2(
      mu_train[:, active], f_train, mu_test[:, active], f_test,
      factor_names=factor_names, seed=seed)
  paths['encoded'] = interpretation.plot_encoded_r2(
      result['encoded'], os.path.join(out_dir, 'encoded_r2.png'),
      title=f'What the {len(active)} active factors carry of each true '
      'factor (held-out R\u00b2)')
  timings['encoded'] = time.perf_counter() - t0

  paths['matrices'] = os.path.join(out_dir, 'matrices.npz')
  np.savez(paths['matrices'], rho=result['rho'],
           rho_codes=result['codes'],
           rho_columns=np.asarray(result['column_keys']),
           factor_names=np.asarray(factor_names), **mats)
  paths['json'] = os.path.join(out_dir, 'metrics.json')
  with open(paths['json'], 'w') as f:
    json.dump(dict(scores=scores, names=result['names'], best=result['best'],
                   encoded=result['encoded'], settings=settings,
                   timings=timings), f, indent=2,
              default=lambda o: np.asarray(o).tolist())
  paths['markdown'] = os.path.join(out_dir, 'metrics.md')
  with open(paths['markdown'], 'w') as f:
    f.write(_markdown(scores, result, settings))
  return dict(scores=scores, names=result['names'], best=result['best'],
              encoded=result['encoded'], paths=paths)
