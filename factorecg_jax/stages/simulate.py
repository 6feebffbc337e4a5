"""Stage `simulate`: what the simulated data set looks like, before training.

Example 12-lead ECGs, factor histograms, label prevalences, measurement
statistics, EF and survival (demo.simulate_summary), under
`<workdir>/simulated/`. Needs no trained model, so `--mode=all` runs it
first; it applies to configs with a `simulate` block.
"""

import os
from typing import Any

import ml_collections

from factorecg_jax import demo
from factorecg_jax import stages


def _has_simulate_block(config: ml_collections.ConfigDict) -> bool:
  return 'simulate' in config


@stages.register('simulate', requires=(), order=0, folder='simulated',
                 sections=('seed', 'simulate'),
                 applies=_has_simulate_block,
                 description='example ECGs, labels, EF and survival')
def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Simulates `config.simulate.num_records` records; returns the summary."""
  headline = demo.simulate_summary(config, workdir)
  out_dir = os.path.join(workdir, 'simulated')
  prevalence = headline.pop('prevalence_percent')
  figures = {os.path.splitext(f)[0]: os.path.join(out_dir, f)
             for f in sorted(os.listdir(out_dir)) if f.endswith('.png')}
  return stages.summary(
      scalars=headline,
      headline={
          'records': headline['num_records'],
          'mean EF (%)': round(headline['mean_ef'], 1),
          'reduced EF (%)': round(100 * headline['reduced_ef_prevalence'], 1),
          '1-year mortality (%)': round(
              100 * headline['one_year_mortality'], 1)},
      tables=dict(label_prevalence=[dict(label=k, percent=v)
                                    for k, v in prevalence.items()]),
      figures=figures,
      files=dict(summary=os.path.join(out_dir, 'summary.md')))
