"""Stage `traverse`: decoded ECGs along each active factor.

Model level: the population mean of the factors (of the encoded split) with
one active factor moved by `analysis.traversal_sds` SDs and decoded, one
12-lead overlay per factor plus a grid of all active factors; individual
level: the same from one record's factors. Writes `<workdir>/traversals/`.
"""

import os
import re
from typing import Any

from absl import logging
import ml_collections
import numpy as np

from factorecg_jax import console
from factorecg_jax import stages
from factorecg_jax.analysis import factors as factors_lib
from factorecg_jax.analysis import ranking
from factorecg_jax.stages import _common
from factorecg_jax.stages import encode
from factorecg_jax.viz import ecg_plot


@stages.register('traverse', requires=('encode',), order=30,
                 folder=_common.TRAVERSALS_DIR, applies=encode.is_vae,
                 description='decoded ECGs along each active factor')
def run(
    config: ml_collections.ConfigDict, workdir: str
) -> dict[str, Any]:
  """Stage traverse: traversal figures of the active factors.

  Model level: the population mean of the factors (of the encoded split)
  with one active factor set to `analysis.traversal_sds` population SDs
  (`analysis.traversal_scale='prior'`: prior SDs) and decoded, one 12-lead
  overlay per factor and a grid of all active factors over
  `analysis.traversal_leads`. Individual level: the same for the record
  `analysis.record_index` of the split (its factors as the start). Uses the
  split's factors file if it is up to date, else encodes first.

  Args:
    config: experiment config (the run's).
    workdir: run directory written by --mode=train.

  Returns:
    The stage summary (saved as `<workdir>/traversals/summary.json`).

  Raises:
    ValueError: if the record is not among the encoded records.
  """
  _common.check_single_process('traverse')
  analysis = config.analysis
  model, params, step = _common.restore(config, workdir)
  saved = _common.load_or_encode(config, workdir, model, params, step)
  mu = saved['mu']
  threshold = float(analysis.kl_threshold)
  kl = factors_lib.kl_per_dim(mu, saved['sd'])
  dims = factors_lib.active_factors(kl, threshold)
  if not len(dims):
    logging.warning('No factor has KL > %g nats; traversing all %d.',
                    threshold, len(kl))
    dims = ranking.argsort_descending(kl)
  sds = np.asarray(tuple(analysis.traversal_sds), np.float64)
  leads = tuple(analysis.traversal_leads)
  kind = analysis.get('traversal_scale', 'population')
  if kind not in _common.TRAVERSAL_SCALES:
    raise ValueError(f'analysis.traversal_scale={kind!r}; use one of '
                     f'{_common.TRAVERSAL_SCALES}.')
  scale = (factors_lib.population_sd(mu) if kind == 'population'
           else np.ones(mu.shape[1]))
  record = int(analysis.record_index)
  where = np.flatnonzero(saved['index'] == record)
  if not len(where):
    raise ValueError(
        f'analysis.record_index={record} is not among the {len(mu)} encoded '
        f"records of split {saved['split']!s} (indices "
        f"{saved['index'].min()}..{saved['index'].max()})."
    )
  record_id = saved['ids'][where[0]]
  normalizer = _common.training_normalizer(config, workdir)
  decode_fn = _common.denormalizing_decode_fn(model, params, normalizer)
  population = factors_lib.population_traversal(
      decode_fn, mu, dims, sds, scale=scale
  )
  individual = factors_lib.individual_traversal(
      decode_fn, mu[where[0]], dims, sds, scale
  )

  folder = os.path.join(workdir, _common.TRAVERSALS_DIR)
  unit = f'{kind} SD'
  paths = {}
  progress = console.Progress(len(dims) + 2, '  traversal figures',
                              unit='figures')
  for i, d in enumerate(dims):
    progress.update(1)
    fig = ecg_plot.plot_traversal(
        population[i], sds, factor_name=f'factor {d}', value_label=unit,
        title=(f'Factor {d} (KL {kl[d]:.3g} nats): population mean, '
               f'factor moved by {sds.min():g}..{sds.max():g} {unit}'),
    )
    paths[f'factor_{d:02d}'] = str(ecg_plot.save_figure(
        fig, os.path.join(folder, f'factor_{d:02d}.png'), dpi=100))
  rows = {f'factor {d}': population[i] for i, d in enumerate(dims)}
  fig = ecg_plot.plot_traversal_grid(
      rows, sds, leads=leads, value_label=unit,
      title=f'{len(dims)} factors: population mean, one factor moved')
  paths['all_active_factors'] = str(ecg_plot.save_figure(
      fig, os.path.join(folder, 'all_active_factors.png'), dpi=100))
  progress.update(1)
  rows = {f'factor {d}': individual[i] for i, d in enumerate(dims)}
  fig = ecg_plot.plot_traversal_grid(
      rows, sds, leads=leads, value_label=unit,
      title=f'Record {record_id}: its factors, one factor moved')
  # Record ids of real data sets may hold characters unfit for file names.
  name = 'record_' + re.sub(r'[^A-Za-z0-9_.-]', '_', str(record_id))
  name += '_factors'
  paths[name] = str(ecg_plot.save_figure(
      fig, os.path.join(folder, f'{name}.png'), dpi=100))
  progress.update(1)
  progress.close()

  paths['arrays'] = factors_lib.save_factors(
      os.path.join(folder, 'traversals.npz'),
      dict(population=population, individual=individual, dims=dims,
           sds=sds, scale=scale, center=mu.mean(axis=0),
           record_factors=mu[where[0]], record_index=record,
           record_id=record_id, kl_per_dim=kl, step=step),
  )
  summary = stages.summary(
      scalars=dict(num_traversed=len(dims),
                   num_active=int(np.sum(kl > threshold))),
      headline={'factors traversed': len(dims)},
      figures=paths_figures(paths),
      files=dict(arrays=paths['arrays']),
      details=dict(
          checkpoint_step=step, split=str(saved['split']),
          num_records=int(len(mu)), kl_threshold=threshold,
          dims=[int(d) for d in dims], sds=sds.tolist(),
          traversal_scale=kind, record_index=record,
          record_id=np.asarray(record_id).item(), leads=list(leads)),
  )
  console.info(f'  traversed {len(dims)} factors; figures in {folder}.')
  return summary


def paths_figures(paths: dict[str, str]) -> dict[str, str]:
  """The figure entries of the traversal paths (all but the npz)."""
  return {k: v for k, v in paths.items() if k != 'arrays'}
