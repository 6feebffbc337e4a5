"""Stage `downstream`: interpretable models on the ECG factors vs the black box.

FactorECG's claim (van de Leur et al. 2022): simple models on ~21 factors
match black-box networks while each prediction is explained by the factors.
On the same splits this fits and compares, per task (the 16 labels, reduced
EF, 1-year mortality):

* factor models on the VAE's active factors (posterior means of held-out
  records; + age and sex for mortality, as the paper): logistic regression
  (statsmodels; odds ratios per SD with 95 % CIs), gradient-boosted trees
  (XGBoost with SHAP from `pred_contribs`) and a Cox model (lifelines;
  hazard ratios, C-index, proportional-hazards test, IPCW 1-year AUROC,
  Kaplan-Meier by risk quartile, calibration);
* the black-box ResNets of the `blackbox` stage (beats and strips), scored
  on their saved predictions for the same test records;
* an oracle: the same factor models on the simulator's true factors;
* external validation, as in the paper: the fitted models applied unchanged
  to the test split of a differently drawn population
  (`downstream.external_mode`, e.g. the realistic sampler for a run trained
  on the uniform one), the ResNets restored and predicting it;
* real data, when you have it: PTB-XL's diagnostic superclasses through its
  TFDS builder (`downstream.ptbxl.name`, e.g. 'ptbxl/default', and
  `data_dir`): the VAE encodes PTB-XL's median beats and logistic models on
  its factors (alone, and + age + sex) are fitted on folds 1-8 and tested on
  fold 10, beside the ResNet the `blackbox` stage trains on the same folds.

Every AUROC and C-index has a bootstrap 95 % CI (`downstream.num_resamples`,
2,000 as the paper). Each factor model is also compared with each ResNet and
with its oracle twin by a paired bootstrap (both on the same records and
resamples): the difference with its CI, whether the factor model is at
most `downstream.margin` (0.02) below the reference (point estimate) and
whether it is non-inferior by that margin (the CI's lower bound above
-margin).

Writes `<workdir>/downstream/`: comparison.json/.md/.png, differences.json,
one JSON per fit, Kaplan-Meier and calibration figures, and the explanation
(top factors per task with their traversal figures and direction of risk;
one record's counterfactual ECG with its top factor moved to the population
mean, decoded, with the new predicted risk).
"""

import json
import os
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np
from scipy import special

from factorecg_jax import console
from factorecg_jax import stages
from factorecg_jax.analysis import disentanglement_report
from factorecg_jax.analysis import downstream as models_lib
from factorecg_jax.analysis import factors as factors_lib
from factorecg_jax.analysis import statistics
from factorecg_jax.data import input_pipeline
from factorecg_jax.data import simulator
from factorecg_jax.stages import _common
from factorecg_jax.stages import blackbox
from factorecg_jax.stages import encode
from factorecg_jax.viz import ecg_plot

FOLDER = 'downstream'
_FIELDS = ('factors', 'labels', 'reduced_ef', 'time', 'event', 'age', 'sex')
TASK_LABELS = {'labels': '16 labels', 'reduced_ef': 'reduced EF',
               'mortality': '1-year mortality'}


def applies(config: ml_collections.ConfigDict) -> bool:
  return encode.is_vae(config) and 'downstream' in config


def _records(config: ml_collections.ConfigDict, split: str, n: int,
             mode: str | None = None) -> dict[str, np.ndarray]:
  """The first n records of a split with the outcome fields (mV inputs).

  `mode` draws them from another factor sampler of the simulator (external
  validation: a differently drawn population).
  """
  data = ml_collections.ConfigDict(config.data.to_dict())
  data.update(eval_split=split, prefetch=0, normalization='none',
              num_eval=int(n))
  if mode:
    data.mode = mode
  if split == 'train':
    data.num_train = max(int(data.num_train), int(n))
  data.extra_keys = _FIELDS
  _, _, info = input_pipeline.get_datasets(
      data, global_batch_size=int(config.train.batch_size), seed=config.seed)
  source = info['eval_source']
  n = min(int(n), len(source))
  out = source.get_batch(np.arange(n))
  out['ecg'] = out[info['input_key']]
  out['index'] = np.arange(n)  # record index in the split
  return out


def _features(mu: np.ndarray, dims: np.ndarray, rec: dict[str, Any],
              with_covariates: bool) -> tuple[np.ndarray, list[str]]:
  x = [mu[:, dims]]
  names = [f'factor {d}' for d in dims]
  if with_covariates:
    x += [rec['age'][:, None], rec['sex'][:, None]]
    names += ['age', 'sex']
  return np.concatenate(x, axis=1).astype(np.float64), names


def _save_json(folder: str, name: str, value: Any) -> str:
  path = os.path.join(folder, f'{name}.json')
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(value, f, indent=1, default=lambda o: np.asarray(o).tolist())
  return path


def _saved_predictions(workdir, target, input_key, test):
  """(record positions in `test`, outputs) from a run's eval predictions."""
  path = os.path.join(blackbox.run_dir(workdir, target, input_key),
                      'eval_predictions.npz')
  if not os.path.exists(path):
    console.info(f'  no predictions at {path}: black-box row skipped')
    return None
  pred = np.load(path)
  index_of = {int(i): k for k, i in enumerate(test['index'])}
  keep = np.array([int(i) in index_of for i in pred['index']])
  order = np.array([index_of[int(i)] for i in pred['index'][keep]])
  return order, _prediction(pred)[keep]


def _external_predictions(config, workdir, target, input_key, split, n,
                          mode):
  """(positions, outputs) of a trained ResNet on external records."""
  # pylint: disable-next=g-import-not-at-top
  from factorecg_jax.training import losses
  # pylint: disable-next=g-import-not-at-top
  from factorecg_jax.training import restore as restore_lib
  import jax  # pylint: disable=g-import-not-at-top
  restored = restore_lib.restore(blackbox.run_dir(workdir, target, input_key))
  cfg = restored.config
  rec = _records(cfg, split, n, mode=mode)
  extra_keys = tuple(cfg.loss.get('extra_keys', ()) or ())
  model = restored.model

  @jax.jit
  def predict(variables, x, extra):
    return model.apply(variables, x, extra, train=False)[0]

  outs, size = [], 64
  x_all = restored.normalizer(rec['ecg'])
  for start in range(0, len(x_all), size):
    part = {'ecg': x_all[start:start + size]}
    for key in extra_keys:
      part[key] = rec[key][start:start + size]
    pad = size - len(part['ecg'])
    part = {k: np.concatenate([v, np.repeat(v[-1:], pad, 0)]) if pad else v
            for k, v in part.items()}
    x, extra = losses.model_inputs(part, extra_keys=extra_keys)
    outs.append(np.asarray(predict(restored.variables, x, extra))[
        :size - pad])
  return np.arange(len(x_all)), np.concatenate(outs).astype(np.float64)


def _blackbox_rows(config, workdir, test, train_rec, num_resamples, seed,
                   *, external_mode=None, suffix='', scores=None):
  """Comparison rows of the black-box runs on `test`.

  Internal test records: the runs' saved eval predictions. External ones
  (`external_mode`): the restored ResNets predict them. `scores` collects
  each run's outputs for `_paired_differences`.
  """
  rows = []
  scores = {} if scores is None else scores
  if not blackbox.applies(config):
    return rows
  for target in config.blackbox.targets:
    for input_key in config.blackbox.inputs:
      if external_mode:
        found = _external_predictions(
            config, workdir, target, input_key, 'test', len(test['index']),
            external_mode)
      else:
        found = _saved_predictions(workdir, target, input_key, test)
      if found is None:
        continue
      order, out = found
      model = f'ResNet ({input_key}){suffix}'
      horizon = float(config.downstream.horizon)
      metrics = (('macro AUROC',) if target == 'labels' else ('AUROC',)
                 if target == 'reduced_ef' else
                 ('C-index', _at_horizon(horizon)))
      scores.setdefault(target, {})[model] = _scored(
          {m: out if target == 'labels' else out.reshape(-1)
           for m in metrics}, positions=order)
      if target == 'labels':
        ci = statistics.bootstrap_macro_auroc(
            test['labels'][order], out, num_resamples=num_resamples,
            seed=seed)
        rows.append(_row(model, TASK_LABELS[target], 'macro AUROC', ci,
                         len(order)))
      elif target == 'reduced_ef':
        ci = statistics.bootstrap_auroc(
            test['reduced_ef'][order], out.reshape(-1),
            num_resamples=num_resamples, seed=seed)
        rows.append(_row(model, TASK_LABELS[target], 'AUROC', ci,
                         len(order)))
      else:
        risk = out.reshape(-1)
        ci = statistics.bootstrap_concordance(
            test['time'][order], risk, test['event'][order],
            num_resamples=num_resamples, seed=seed)
        rows.append(_row(model, TASK_LABELS[target], 'C-index', ci,
                         len(order)))
        ci = statistics.bootstrap_time_dependent_auroc(
            train_rec['time'], train_rec['event'], test['time'][order],
            test['event'][order], risk, horizon=horizon,
            num_resamples=num_resamples, seed=seed)
        rows.append(_row(model, TASK_LABELS[target], _at_horizon(horizon),
                         ci, len(order)))
  return rows


def _prediction(pred) -> np.ndarray:
  for key in ('logits', 'risk', 'prediction', 'outputs'):
    if key in pred:
      return np.asarray(pred[key], np.float64)
  raise KeyError(f'No prediction array among {sorted(pred.keys())}.')


def _row(model, task, metric, ci, n):
  return dict(model=model, task=task, metric=metric, value=ci.get('value'),
              low=ci.get('low'), high=ci.get('high'), n=n)


def _at_horizon(horizon: float) -> str:
  return f'AUROC at {horizon:g} y'  # as `models_lib.comparison_row` names it


def _scored(values, positions=None, columns=None) -> dict[str, Any]:
  """One model's test outputs per metric, for `_paired_differences`.

  positions: the records of `test` they belong to (None: all, in order);
  columns: for the 16 labels, which label each output column is.
  """
  return dict(values=values, positions=positions, columns=columns)


def _factor_scores(fit, task, horizon) -> dict[str, Any] | None:
  """A factor/oracle fit's test outputs (None if it was skipped)."""
  if fit.get('status') in ('skipped', 'failed'):
    return None
  if task == 'labels':
    used = [fit['label_names'].index(n) for n in fit['labels_used']]
    if not used:
      return None
    matrix = np.stack([np.asarray(fit['per_label'][fit['label_names'][k]][
        'test_scores'], np.float64) for k in used], axis=1)
    return _scored({'macro AUROC': matrix}, columns=used)
  if task == 'reduced_ef':
    return _scored({'AUROC': np.asarray(fit['test_scores'], np.float64)})
  return _scored({
      'C-index': np.asarray(fit['test_log_partial_hazard'], np.float64),
      _at_horizon(horizon): np.asarray(fit['test_risk_at_horizon'],
                                       np.float64)})


def _fit_factor_models(test, mu_test, suffix, fits, rows, figures, folder, *,
                       ds, train_rec, mu_train, feature_sets, model_label,
                       label_names, horizon, kw, scores=None):
  """Fits every factor/oracle model on the training records; scores `test`.

  Appends comparison rows (model names end with `suffix`), stores the fit
  results in `fits`, the Kaplan-Meier/calibration figures in `figures` and
  each model's test outputs in `scores` (task -> model -> `_scored`).
  """
  scores = {} if scores is None else scores

  def keep(fit, model, task):
    found = _factor_scores(fit, task, horizon)
    if found is not None:
      scores.setdefault(task, {})[model] = found

  steps = [(s, t) for s in feature_sets for t in ('labels', 'reduced_ef',
                                                  'mortality')]
  progress = console.Progress(len(steps), '  factor models' + suffix,
                              unit='fits')
  for kind, task in steps:
    use_cov = task == 'mortality' and bool(ds.get('age_sex', True))
    x_tr, names = feature_sets[kind](train_rec, mu_train, use_cov)
    x_te, _ = feature_sets[kind](test, mu_test, use_cov)
    who = model_label[kind]
    if task == 'labels':
      fit = models_lib.fit_logistic_multilabel(
          x_tr, train_rec['labels'], x_te, test['labels'], names=names,
          label_names=label_names, **kw)
      fits[f'{kind}_labels_logistic'] = fit
      keep(fit, f'{who}: logistic{suffix}', task)
      rows.append(models_lib.comparison_row(
          fit, model=f'{who}: logistic{suffix}', task=TASK_LABELS[task]))
    elif task == 'reduced_ef':
      fit = models_lib.fit_logistic(
          x_tr, train_rec['reduced_ef'], x_te, test['reduced_ef'],
          names=names, **kw)
      fits[f'{kind}_reduced_ef_logistic'] = fit
      keep(fit, f'{who}: logistic{suffix}', task)
      rows.append(models_lib.comparison_row(
          fit, model=f'{who}: logistic{suffix}', task=TASK_LABELS[task]))
      fit = models_lib.fit_xgboost(
          x_tr, train_rec['reduced_ef'], x_te, test['reduced_ef'],
          names=names, **kw)
      fits[f'{kind}_reduced_ef_xgboost'] = fit
      keep(fit, f'{who}: XGBoost{suffix}', task)
      rows.append(models_lib.comparison_row(
          fit, model=f'{who}: XGBoost{suffix}', task=TASK_LABELS[task]))
    else:
      fit = models_lib.fit_cox(
          x_tr, train_rec['time'], train_rec['event'], x_te, test['time'],
          test['event'], names=names, horizon=horizon, **kw)
      fits[f'{kind}_mortality_cox'] = fit
      keep(fit, f'{who}: Cox{suffix}', task)
      rows.append(models_lib.comparison_row(
          fit, model=f'{who}: Cox{suffix}', task=TASK_LABELS[task]))
      rows.append(models_lib.comparison_row(
          fit, model=f'{who}: Cox{suffix}', task=TASK_LABELS[task],
          metric='auroc_at_horizon'))
      usable = fit.get('status') not in ('skipped', 'failed')
      if kind == 'factors' and not suffix and usable:
        figures['km_by_quartile'] = models_lib.plot_km_by_quartile(
            fit, os.path.join(folder, 'km_by_quartile.png'))
        figures['calibration'] = models_lib.plot_calibration(
            fit, os.path.join(folder, 'calibration.png'))
    progress.update(1)
  progress.close()


def _paired_metric(metric, a, b, test, pos, train_rec, horizon, kw):
  """The paired bootstrap of metric(a) - metric(b) on the records `pos`."""
  if metric == 'macro AUROC':  # a: (scores, the label columns they hold)
    return statistics.bootstrap_macro_auroc(
        test['labels'][pos][:, a[1]], a[0], reference=b, **kw)
  if metric == 'AUROC':
    return statistics.bootstrap_auroc(test['reduced_ef'][pos], a,
                                      reference=b, **kw)
  if metric == 'C-index':
    return statistics.bootstrap_concordance(
        test['time'][pos], a, test['event'][pos], reference=b, **kw)
  try:
    return statistics.bootstrap_time_dependent_auroc(
        train_rec['time'], train_rec['event'], test['time'][pos],
        test['event'][pos], a, horizon, reference=b, **kw)
  except ValueError as e:  # e.g. test follow-up beyond the training one.
    console.info(f'  paired {metric} undefined: {e}')
    return dict(value=np.nan, low=np.nan, high=np.nan, num_resamples_used=0)


def _paired_differences(scores, test, train_rec, *, horizon, margin, kw
                        ) -> list[dict[str, Any]]:
  """Each factor model minus each ResNet and minus its oracle twin.

  Both models' outputs on the same test records (the ResNet's, where it
  predicted a subset), scored on the same bootstrap resamples: the
  difference's 95 % CI, and whether the factor model is at most `margin`
  below the reference (`within_margin`, point estimate; a better factor
  model is within) and non-inferior by it (`non_inferior`: the CI's lower
  bound above -margin). Several comparisons are made and none is adjusted
  for multiplicity. Labels: the macro AUROC over the labels both models
  scored (`num_labels`), which may be fewer than either row's own.
  """
  rows = []
  for task, models in scores.items():
    for name, entry in models.items():
      if not name.startswith('factors: '):
        continue
      kind, _, suffix = name[len('factors: '):].partition(' · ')
      suffix = ' · ' + suffix if suffix else ''
      references = [r for r in models if r.startswith('ResNet ')]
      references += [r for r in models
                     if r == f'oracle (true factors): {kind}{suffix}']
      for ref in references:
        other = models[ref]
        if entry['positions'] is not None and other['positions'] is not None:
          continue  # never two subsets: factor models score every record
        subset = (other['positions'] if other['positions'] is not None
                  else entry['positions'])
        # Records in test order, whatever order a run saved them in: the
        # resamples (drawn by position) are then the same for every pair.
        within = (np.arange(len(test['index'])) if subset is None else
                  np.argsort(subset, kind='stable'))
        pos = within if subset is None else subset[within]
        for metric, a in entry['values'].items():
          b = other['values'].get(metric)
          if b is None:
            continue
          a_sel = a[within] if entry['positions'] is not None else a[pos]
          b_sel = b[within] if other['positions'] is not None else b[pos]
          num_labels = None
          if metric == 'macro AUROC':
            cols_a = list(entry['columns'] or range(a.shape[1]))
            cols_b = list(other['columns'] or range(b.shape[1]))
            common = [c for c in cols_a if c in cols_b]
            num_labels = len(common)
            a_sel = (a_sel[:, [cols_a.index(c) for c in common]], common)
            b_sel = b_sel[:, [cols_b.index(c) for c in common]]
          ci = _paired_metric(metric, a_sel, b_sel, test, pos, train_rec,
                              horizon, kw)
          d, low, high = (float(ci[k]) for k in ('value', 'low', 'high'))
          finite = lambda v: v if np.isfinite(v) else None  # noqa: E731
          rows.append(dict(
              task=TASK_LABELS[task], metric=metric, model=name,
              reference=ref, difference=finite(d), low=finite(low),
              high=finite(high), n=len(pos), num_labels=num_labels,
              margin=margin,
              within_margin=bool(np.isfinite(d) and d >= -margin),
              non_inferior=bool(np.isfinite(low) and low > -margin)))
  return rows


def _differences_markdown(rows: list[dict[str, Any]]) -> str:
  if not rows:
    return ''
  margin = rows[0]['margin']
  lines = ['## Paired differences: factor model minus reference', '',
           'Both models on the same test records and the same bootstrap '
           f'resamples. Within {margin:g}: the factor model is at most '
           f'{margin:g} below the reference (point estimate); non-inferior: '
           f'the 95 % CI of the difference lies above -{margin:g}. Not '
           'adjusted for the number of comparisons. 16 labels: the macro '
           'AUROC over the labels both models scored.', '',
           '| task | factor model | reference | metric | difference | '
           '95 % CI | within | non-inferior | n |',
           '|---|---|---|---|---:|---|---|---|---:|']
  for r in rows:
    diff, _, ci = _fmt_difference(r).partition(' (')
    lines.append(
        f'| {r["task"]} | {r["model"]} | {r["reference"]} | {r["metric"]} '
        f'| {diff} | {ci.rstrip(")") or "n/a"} | '
        f'{"yes" if r["within_margin"] else "no"} | '
        f'{"yes" if r["non_inferior"] else "no"} | {r["n"]} |')
  return '\n'.join(lines) + '\n'


@stages.register('downstream', requires=(stages.TRAIN, 'blackbox'), order=60,
                 folder=FOLDER, applies=applies,
                 description='factor models vs black box vs oracle')
def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Fits, compares and explains; returns the stage summary."""
  _common.check_single_process('downstream')
  ds = config.downstream
  folder = os.path.join(workdir, FOLDER)
  os.makedirs(folder, exist_ok=True)
  seed = int(config.seed)
  num_resamples = int(ds.num_resamples)
  horizon = float(ds.horizon)

  # The trained VAE encodes both splits (inputs normalised as in training).
  model, params, _ = _common.restore(config, workdir)
  normalizer = _common.training_normalizer(config, workdir)
  mean, std = jnp.asarray(normalizer.mean), jnp.asarray(normalizer.std)
  encode_fn = disentanglement_report.make_encode_fn(
      model.apply, {'params': params}, batch_size=_common.batch_size(config),
      preprocess=None if normalizer.kind == 'none'
      else lambda x: (x - mean) / std)
  console.info(f'  encoding {ds.num_train} train + {ds.num_test} test '
               'records')
  train_rec = _records(config, 'train', ds.num_train)
  test = _records(config, 'validation', ds.num_test)
  mu_train, sd_train = encode_fn(train_rec['ecg'])
  mu_test, _ = encode_fn(test['ecg'])
  kl = factors_lib.kl_per_dim(mu_train, sd_train)
  dims = factors_lib.active_factors(kl, float(config.analysis.kl_threshold))
  if not len(dims):
    dims = np.arange(mu_train.shape[1])

  label_names = list(simulator.LABEL_NAMES)
  true_names = list(simulator.FACTOR_NAMES)
  feature_sets = {
      'factors': lambda rec, mu, cov: _features(mu, dims, rec, cov),
      'oracle': lambda rec, mu, cov: (
          np.concatenate([rec['factors']] + ([rec['age'][:, None],
                                              rec['sex'][:, None]]
                                             if cov else []), axis=1),
          true_names + (['age', 'sex'] if cov else [])),
  }
  model_label = {'factors': 'factors', 'oracle': 'oracle (true factors)'}
  rows, fits, figures = [], {}, {}
  kw = dict(num_resamples=num_resamples, seed=seed)
  fit_all = dict(ds=ds, train_rec=train_rec, mu_train=mu_train,
                 feature_sets=feature_sets, model_label=model_label,
                 label_names=label_names, horizon=horizon, kw=kw)
  margin = float(ds.get('margin', 0.02))
  scores = {}
  _fit_factor_models(test, mu_test, '', fits, rows, figures, folder,
                     scores=scores, **fit_all)
  rows += _blackbox_rows(config, workdir, test, train_rec, num_resamples,
                         seed, scores=scores)
  differences = _paired_differences(scores, test, train_rec,
                                    horizon=horizon, margin=margin, kw=kw)
  external = ds.get('external_mode', '')
  if external:
    # External validation as in the paper: the models fitted above, applied
    # unchanged to a differently drawn population (another factor sampler).
    console.info(f'  external validation on {ds.num_test} records of the '
                 f'{external!r} population')
    ext = _records(config, 'test', ds.num_test, mode=external)
    mu_ext, _ = encode_fn(ext['ecg'])
    suffix = f' · external ({external})'
    ext_scores = {}
    _fit_factor_models(ext, mu_ext, suffix, {}, rows, {}, folder,
                       scores=ext_scores, **fit_all)
    rows += _blackbox_rows(config, workdir, ext, train_rec, num_resamples,
                           seed, external_mode=external, suffix=suffix,
                           scores=ext_scores)
    differences += _paired_differences(ext_scores, ext, train_rec,
                                       horizon=horizon, margin=margin, kw=kw)

  ptbxl_rows, ptbxl_files = _ptbxl_rows(config, workdir, encode_fn, dims, kw,
                                        folder)
  rows += ptbxl_rows
  per_label = _per_label_table(config, workdir, fits, test, label_names)
  markdown, table = models_lib.comparison_table(rows)
  files = {name: _save_json(folder, name, fit) for name, fit in fits.items()}
  files.update(ptbxl_files)
  files['comparison_json'] = _save_json(folder, 'comparison', table)
  files['markdown'] = os.path.join(folder, 'comparison.md')
  explanation = _explain(config, workdir, folder, fits, dims, mu_test, test,
                         model, params, normalizer, figures)
  with open(files['markdown'], 'w', encoding='utf-8') as f:
    f.write('# Factor models vs black box vs oracle\n\n' + markdown
            + '\n' + _differences_markdown(differences) + '\n'
            + _per_label_markdown(per_label) + '\n'
            + explanation['markdown'])
  figures['comparison'] = models_lib.plot_comparison(
      rows, os.path.join(folder, 'comparison.png'),
      title='Test split, 95 % bootstrap CIs')
  headline = {f'{r["task"]}, {r["model"]} ({r["metric"]})':
              _fmt_ci(r) for r in table}
  scalars = {f'{r["task"]}/{r["model"]}/{r["metric"]}': r['value']
             for r in table}
  for r in differences:
    key = f'{r["task"]}, {r["model"]} - {r["reference"]} ({r["metric"]})'
    scalars[f'difference/{key}'] = r['difference']
    if ' · ' not in r['model']:  # the internal test split's, up front
      headline[f'difference: {key}'] = _fmt_difference(r)
  files['differences_json'] = _save_json(folder, 'differences', differences)
  return stages.summary(
      scalars=scalars, headline=headline, tables=dict(
          comparison=table, differences=differences, per_label=per_label,
          top_factors=explanation['top']),
      figures=figures, files=files,
      details=dict(active_factors=dims.tolist(), num_train=len(mu_train),
                   num_test=len(mu_test), num_resamples=num_resamples,
                   counterfactual=explanation['counterfactual']))


def _per_label_table(config, workdir, fits, test, label_names
                     ) -> list[dict[str, Any]]:
  """Test AUROC per label: factor and oracle logistic models, ResNets."""
  columns = {}
  for kind, who in (('factors', 'factors: logistic'),
                    ('oracle', 'oracle: logistic')):
    fit = fits.get(f'{kind}_labels_logistic', {})
    columns[who] = {
        label: (res.get('auroc') or {}).get('value')
        for label, res in fit.get('per_label', {}).items()}
  if blackbox.applies(config) and 'labels' in config.blackbox.targets:
    for input_key in config.blackbox.inputs:
      found = _saved_predictions(workdir, 'labels', input_key, test)
      if found is None:
        continue
      order, out = found
      columns[f'ResNet ({input_key})'] = {
          label: statistics.auroc(test['labels'][order, k], out[:, k])
          for k, label in enumerate(label_names)}
  rows = []
  for k, label in enumerate(label_names):
    row = dict(label=label, prevalence=float(np.mean(test['labels'][:, k])))
    for who, values in columns.items():
      value = values.get(label)
      row[who] = (None if value is None or not np.isfinite(value)
                  else float(value))
    rows.append(row)
  return rows


def _per_label_markdown(rows: list[dict[str, Any]]) -> str:
  if not rows:
    return ''
  models = [k for k in rows[0] if k not in ('label', 'prevalence')]
  lines = ['## AUROC per label (test split)', '',
           '| label | prevalence | ' + ' | '.join(models) + ' |',
           '|---|---:|' + '---:|' * len(models)]
  for row in rows:
    cells = ['n/a' if row[m] is None else f'{row[m]:.3f}' for m in models]
    lines.append(f'| {row["label"]} | {100 * row["prevalence"]:.1f} % | '
                 + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def _ptbxl_split(pt, split: str, limit: int) -> dict[str, np.ndarray]:
  """A PTB-XL split through its TFDS builder (median beats, superclasses)."""
  # Registers the builder with TFDS (reading needs no TensorFlow).
  # pylint: disable-next=g-import-not-at-top,unused-import
  from factorecg_jax.data.ptbxl import ptbxl_dataset_builder
  from factorecg_jax.data import sources  # pylint: disable=g-import-not-at-top
  source = sources.TfdsSource(
      pt.name, split, data_dir=pt.get('data_dir') or None,
      fields=('beat', 'superclass', 'age', 'sex'), download=False)
  n = len(source) if limit <= 0 else min(int(limit), len(source))
  out = source.get_batch(np.arange(n))
  out['index'] = np.arange(n)  # record index in the split
  return out


def _ptbxl_covariates(rec, age_fill: float) -> np.ndarray:
  """[n, 2]: age (years; unknown -> training median) and male (PTB-XL codes
  sex 0 = male, 1 = female, -1 unknown -> 0.5)."""
  age = np.asarray(rec['age'], np.float64)
  age = np.where(np.isfinite(age), age, age_fill)
  sex = np.asarray(rec['sex'])
  male = np.where(sex == 0, 1.0, np.where(sex == 1, 0.0, 0.5))
  return np.stack([age, male], axis=1)


def _ptbxl_rows(config, workdir, encode_fn, dims, kw, folder
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """Factor models and the ResNet for PTB-XL's superclasses, if configured.

  The VAE trained on simulated beats encodes PTB-XL median beats; logistic
  regressions on its active factors, alone and with age and sex, are fitted
  on the benchmark's training folds (1-8) and tested on fold 10, beside the
  `blackbox` stage's ResNet trained on the same folds' beats (the like-for-
  like comparison is with the factors alone: the ResNet sees no age or sex).
  """
  pt = config.downstream.get('ptbxl')
  if not pt or not pt.get('name'):
    return [], {}
  # pylint: disable-next=g-import-not-at-top
  from factorecg_jax.data.ptbxl import ptbxl_dataset_builder as pb
  console.info(f'  PTB-XL superclasses ({pt.name})')
  train = _ptbxl_split(pt, 'train', int(pt.get('num_train', 0)))
  test = _ptbxl_split(pt, 'test', int(pt.get('num_test', 0)))
  mu_train, _ = encode_fn(train['beat'])
  mu_test, _ = encode_fn(test['beat'])
  age_fill = float(np.nanmedian(train['age'])) if np.isfinite(
      train['age']).any() else 62.0
  task = 'PTB-XL superclasses'
  y_train = np.asarray(train['superclass'], bool)
  y_test = np.asarray(test['superclass'], bool)
  rows, files = [], {}
  for name, model, covariates in (
      ('ptbxl_superclasses_factors_logistic', 'factors: logistic', False),
      ('ptbxl_superclasses_logistic', 'factors + age, sex: logistic',
       True)):
    names = [f'factor {d}' for d in dims]
    x_train, x_test = mu_train[:, dims], mu_test[:, dims]
    if covariates:
      names += ['age', 'male']
      x_train = np.concatenate(
          [x_train, _ptbxl_covariates(train, age_fill)], axis=1)
      x_test = np.concatenate(
          [x_test, _ptbxl_covariates(test, age_fill)], axis=1)
    fit = models_lib.fit_logistic_multilabel(
        x_train, y_train, x_test, y_test, names=names,
        label_names=list(pb.SUPERCLASSES), **kw)
    files[name] = _save_json(folder, name, fit)
    rows.append(models_lib.comparison_row(fit, model=model, task=task))
  for input_key in (config.blackbox.inputs if blackbox.applies(config)
                    else ()):
    found = _saved_predictions(workdir, blackbox.PTBXL_TARGET, input_key,
                               test)
    if found is not None:
      order, out = found
      ci = statistics.bootstrap_macro_auroc(y_test[order], out, **kw)
      rows.append(_row(f'ResNet ({input_key})', task, 'macro AUROC', ci,
                       len(order)))
  return rows, files


def _fmt_ci(row: dict[str, Any]) -> str:
  value, low, high = row['value'], row['low'], row['high']
  if value is None:
    return 'n/a'
  if low is None or high is None:
    return f'{value:.3f}'
  return f'{value:.3f} ({low:.3f}-{high:.3f})'


def _fmt_difference(row: dict[str, Any]) -> str:
  d, low, high = row['difference'], row['low'], row['high']
  if d is None or not np.isfinite(d):
    return 'n/a'
  ci = (f' ({low:+.3f} to {high:+.3f})'
        if low is not None and np.isfinite(low) else '')
  return f'{d:+.3f}{ci}'


def _explain(config, workdir, folder, fits, dims, mu_test, test, model,
             params, normalizer, figures) -> dict[str, Any]:
  """Top factors per task, and one record's counterfactual ECG."""
  k = int(config.downstream.get('top_k', 3))
  top, lines = [], ['## Explanation: top factors per task', '']
  traversal_dir = os.path.join(workdir, _common.TRAVERSALS_DIR)
  for name in ('factors_reduced_ef_logistic', 'factors_reduced_ef_xgboost',
               'factors_mortality_cox'):
    fit = fits.get(name)
    if not fit:
      continue
    for row in models_lib.top_factors(fit, k):
      entry = dict(fit=name, **row)
      if row['name'].startswith('factor '):
        d = int(row['name'].split()[1])
        path = os.path.join(traversal_dir, f'factor_{d:02d}.png')
        entry['traversal'] = (os.path.relpath(path, workdir)
                              if os.path.exists(path) else None)
      top.append(entry)
      ratio = row.get('ratio')
      lines.append(f'- {name}: {row["name"]} ({row["direction"]}'
                   + (f', ratio per SD {ratio:.2f}' if ratio else '') + ')')
  lines.append('')

  # Counterfactual: the test record with the highest predicted reduced-EF
  # risk, its top factor moved to the population mean.
  counterfactual = {}
  fit = fits.get('factors_reduced_ef_logistic')
  if fit and fit.get('status') not in ('skipped', 'failed') and len(dims):
    coef = {c['name']: c['coef'] for c in fit['coefficients']}
    names = fit['names']
    mean = np.asarray(fit['train_mean'])
    sd = np.asarray(fit['train_sd'])
    x = mu_test[:, dims].astype(np.float64)

    def risk(rows):
      z = (rows - mean) / np.where(sd > 0, sd, 1.0)
      w = np.array([coef.get(n, 0.0) for n in names])
      return special.expit(fit['intercept'] + z @ w)

    scores = risk(x)
    i = int(np.argmax(scores))
    best = models_lib.top_factors(fit, 1)
    if best:
      j = names.index(best[0]['name'])
      moved = x[i].copy()
      moved[j] = mean[j]
      z_new = mu_test[i].copy()
      z_new[dims[j]] = mean[j]
      decode = _common.denormalizing_decode_fn(model, params, normalizer)
      beats = np.asarray(decode(np.stack([mu_test[i], z_new]).astype(
          np.float32)))
      new_risk = float(risk(moved[None])[0])
      fig = ecg_plot.plot_ecg(
          beats, labels=[f'record {int(test["index"][i])}: risk '
                         f'{scores[i]:.2f}', f'{best[0]["name"]} at the '
                         f'population mean: risk {new_risk:.2f}'],
          title='Counterfactual ECG (reduced EF, logistic on factors)')
      figures['counterfactual'] = str(ecg_plot.save_figure(
          fig, os.path.join(folder, 'counterfactual.png'), dpi=100))
      counterfactual = dict(record_index=int(test['index'][i]),
                            factor=best[0]['name'], risk=float(scores[i]),
                            new_risk=new_risk)
      lines += ['## Counterfactual', '',
                f'Record {counterfactual["record_index"]}: predicted risk '
                f'of reduced EF {scores[i]:.2f}; with {best[0]["name"]} at '
                f'the population mean {new_risk:.2f} (counterfactual.png).',
                '']
  return dict(top=top, counterfactual=counterfactual,
              markdown='\n'.join(lines))
