"""The simulated-data summary and the end-to-end demo behind `make demo`.

`simulate_summary` draws a simulated data set and writes what a researcher
looks at first: example 12-lead ECGs (a normal beat, bundle branch blocks, ST
elevation, a 10-s strip), factor histograms, label prevalences, measurement
statistics, EF and survival (Kaplan-Meier by risk quartile), as PNG figures
and one markdown summary. `run_all` adds training of the demo VAE and the
factor analyses, each stage reading the previous stage's saved output
(factorecg_jax/stages/).
"""

from __future__ import annotations

import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import ml_collections
import numpy as np

from factorecg_jax import console
from factorecg_jax.data import simulator as sim
from factorecg_jax.viz import ecg_plot
from factorecg_jax.viz import summary

_MEASUREMENTS = ('hr_bpm', 'pr_ms', 'qrs_ms', 'qt_ms', 'qtc_bazett_ms',
                 'qtc_fridericia_ms', 'qrs_axis_deg', 'p_axis_deg',
                 't_axis_deg', 'sokolow_lyon_mv', 'cornell_mv')


def _example_indices(labels: np.ndarray) -> dict[str, int]:
  """One record per showcased finding (first match; skipped if none)."""
  lab = {name: labels[:, i] for i, name in enumerate(sim.LABEL_NAMES)}
  out = {}
  normal = np.flatnonzero(~labels.any(axis=1))
  if normal.size:
    out['normal'] = int(normal[0])
  for name in ('lbbb', 'rbbb', 'st_elevation', 'lvh'):
    hits = np.flatnonzero(lab[name])
    if hits.size:
      out[name] = int(hits[0])
  return out


def _km_figure(time_years, event, eta, path):
  import lifelines  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  quartile = np.digitize(eta, np.quantile(eta, [0.25, 0.5, 0.75]))
  for q in range(4):
    sel = quartile == q
    km = lifelines.KaplanMeierFitter(label=f'risk quartile {q + 1}')
    km.fit(time_years[sel], event[sel]).plot_survival_function(ax=ax)
  ax.set_xlabel('years')
  ax.set_ylabel('survival')
  ax.set_title('Simulated survival by risk-score quartile')
  ecg_plot.save_figure(fig, path)


def simulate_summary(config: ml_collections.ConfigDict, workdir: str
                     ) -> dict[str, Any]:
  """Simulates `config.simulate.num_records` records and writes a summary.

  Args:
    config: experiment config with a `simulate` block (num_records, mode,
      strips) and `seed`.
    workdir: output directory; results go to `<workdir>/simulated/`.

  Returns:
    dict of headline figures (prevalences, EF, mortality, timings).
  """
  out_dir = os.path.join(workdir, 'simulated')
  os.makedirs(out_dir, exist_ok=True)
  sc = config.simulate
  console.info(f'  simulating {sc.num_records} records ({sc.mode} sampler)')
  t0 = time.perf_counter()
  rec = sim.simulate_records(jax.random.key(config.seed), sc.num_records,
                             mode=sc.mode)
  seconds = time.perf_counter() - t0
  logging.info('Simulated %d records in %.1f s (compile included).',
               sc.num_records, seconds)
  labels = rec['labels']

  examples = _example_indices(labels)
  for name, i in examples.items():
    f = dict(zip(sim.FACTOR_NAMES, rec['factors'][i]))
    title = (f'{name}: HR {f["hr"]:.0f} bpm, PR {f["pr"]:.0f} ms, QRS '
             f'{f["qrs_dur"]:.0f} ms, QTc {f["qtc"]:.0f} ms')
    fig = ecg_plot.plot_ecg(np.stack([rec['beat_clean'][i], rec['beat'][i]]),
                            labels=['clean', 'noisy'], title=title)
    ecg_plot.save_figure(fig, os.path.join(out_dir, f'beat_{name}.png'))
  if sc.strips:
    i = examples.get('normal', 0)
    strip = jax.jit(sim.simulate_strip)(jnp.asarray(rec['factors'][i]),
                                        jax.random.key(config.seed))
    fig = ecg_plot.plot_ecg(np.asarray(strip['ecg']),
                            title='10-s strip (record %d)' % i)
    ecg_plot.save_figure(fig, os.path.join(out_dir, 'strip.png'))

  fig = summary.plot_factor_histograms(
      rec['factors'], sim.FACTOR_NAMES, low=sim.FACTOR_LOW,
      high=sim.FACTOR_HIGH, title='Ground-truth factors')
  ecg_plot.save_figure(fig, os.path.join(out_dir, 'factors.png'))
  fig = summary.plot_label_prevalence(labels, sim.LABEL_NAMES,
                                      title='Label prevalence')
  ecg_plot.save_figure(fig, os.path.join(out_dir, 'labels.png'))
  meas = np.stack([rec['measurements'][k] for k in _MEASUREMENTS], axis=1)
  eta = np.asarray(sim.risk_score(jnp.asarray(rec['factors']),
                                  jnp.asarray(rec['ef']),
                                  age=jnp.asarray(rec['age']),
                                  sex=jnp.asarray(rec['sex'])))
  _km_figure(rec['time'], rec['event'], eta,
             os.path.join(out_dir, 'survival.png'))

  prevalence = summary.prevalence_table(labels, sim.LABEL_NAMES)
  lam = sim.calibrate_lambda(sc.mode)
  one_year = float(np.mean(1 - np.exp(-lam * np.exp(eta))))
  headline = dict(
      num_records=int(sc.num_records), mode=sc.mode,
      seconds=round(seconds, 2),
      mean_ef=float(rec['ef'].mean()),
      reduced_ef_prevalence=float(rec['reduced_ef'].mean()),
      one_year_mortality=one_year, baseline_hazard=lam,
      events_in_follow_up=float(rec['event'].mean()),
      no_label_fraction=float(np.mean(~labels.any(axis=1))),
      prevalence_percent={r['label']: r['percent'] for r in prevalence})
  lines = [
      f'# Simulated data set ({sc.num_records} records, {sc.mode} sampler)',
      '',
      f'Mean EF {headline["mean_ef"]:.1f} %, reduced EF (<= 35 %) '
      f'{100 * headline["reduced_ef_prevalence"]:.1f} %; 1-year mortality '
      f'{100 * one_year:.1f} % (lambda {lam:.4f}/yr); events within '
      f'follow-up {100 * headline["events_in_follow_up"]:.1f} %.',
      '', '## Label prevalence', '',
      summary.markdown_table(prevalence), '',
      '## Measurements', '',
      summary.markdown_table(summary.describe_table(meas, _MEASUREMENTS)),
      '', 'Figures: ' + ', '.join(sorted(
          f for f in os.listdir(out_dir) if f.endswith('.png'))), '']
  with open(os.path.join(out_dir, 'summary.md'), 'w') as f:
    f.write('\n'.join(lines))
  logging.info('Simulated-data summary written to %s', out_dir)
  return headline


def train_headline(workdir: str) -> tuple[dict[str, Any], dict[str, str]]:
  """(headline, main output paths) of the training run in `workdir`."""
  from factorecg_jax.training import train  # pylint: disable=g-import-not-at-top
  final = train.final_metrics(workdir)
  headline: dict[str, Any] = {'steps': int(final.get('step', 0))}
  for key, label in (('train/loss', 'train loss'), ('eval/loss', 'eval loss'),
                     ('eval/r2', 'eval R^2'),
                     ('eval/active_units', 'active units (eval)'),
                     ('eval/auroc', 'eval AUROC'),
                     ('eval/macro_auroc', 'eval macro AUROC'),
                     ('eval/c_index', 'eval C-index')):
    if key in final:
      headline[label] = float(final[key])
  paths = {'train metrics': os.path.join(workdir, 'metrics.jsonl'),
           'checkpoints': os.path.join(workdir, 'checkpoints', '')}
  return headline, paths


def stage_headline(record: dict[str, Any], workdir: str
                   ) -> tuple[dict[str, Any], dict[str, str]]:
  """(headline, main output paths) of a saved stage summary.

  The paths are the stage's folder and its first file (e.g. a markdown
  table); the summary.json there lists everything else.
  """
  from factorecg_jax import stages  # pylint: disable=g-import-not-at-top
  name = record.get('stage', '')
  paths = {}
  if name in stages.STAGES:
    paths[name] = os.path.join(workdir, stages.STAGES[name].out_dir, '')
  files = record.get('files', {})
  for key in ('markdown', 'summary', 'table'):
    if key in files:
      paths[f'{name} {key}'] = os.path.join(workdir, files[key])
      break
  return dict(record.get('headline', {})), paths


def run_all(config: ml_collections.ConfigDict, workdir: str, *,
            force: bool = False, only=None,
            title: str = 'Run finished') -> None:
  """`--mode=all` / `--mode=demo`: every stage in order, then a summary.

  `only`: stage names to restrict the run to (with what they require).
  """
  from factorecg_jax import stages  # pylint: disable=g-import-not-at-top
  from factorecg_jax.training import train  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  done = stages.run_all(config, workdir, train_fn=train.train_and_evaluate,
                        force=force, only=only)
  rows: list[tuple[str, Any]] = [('wall time', console.format_duration(
      time.perf_counter() - t0))]
  paths: dict[str, str] = {}
  for name, record in done:
    if name == stages.TRAIN:
      headline, more = train_headline(workdir)
    else:
      headline, more = stage_headline(record or {}, workdir)
    rows += list(headline.items())
    paths.update(more)
    if name == 'report' and record:  # the page to open, not its folder
      paths['report'] = os.path.join(workdir, record['files']['html'])
  console.summary(f'{title}: results in {workdir}', rows, paths)
