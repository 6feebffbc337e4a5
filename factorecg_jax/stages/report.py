"""Stage `report`: one self-contained HTML page of every stage's results.

Runs last in `--mode=all` and every time (`always=True`: it only reads what
the other stages saved, in seconds). Writes `<workdir>/report/index.html`,
`headline.json` and `tables.md` (factorecg_jax/report.py); open the page in
any browser, offline.
"""

import json
import os
from typing import Any

import ml_collections

from factorecg_jax import report as report_lib
from factorecg_jax import stages


@stages.register('report', requires=(stages.TRAIN,), order=1000,
                 folder=report_lib.REPORT_DIR, always=True,
                 description='self-contained HTML report of every stage')
def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Renders the run's report; returns the summary pointing to the page."""
  page = report_lib.render_run(workdir, config=config)
  out_dir = os.path.dirname(page)
  with open(os.path.join(out_dir, report_lib.HEADLINE_NAME),
            encoding='utf-8') as f:
    numbers = json.load(f)
  figures = numbers.get('figures', {})
  scalars = dict(num_stages=len(numbers.get('stages_run', [])),
                 num_not_run=len(numbers.get('stages_not_run', [])),
                 figures_embedded=int(figures.get('embedded', 0)),
                 figures_missing=int(figures.get('missing', 0)),
                 megabytes=round(os.path.getsize(page) / 2**20, 2))
  return stages.summary(
      scalars=scalars,
      headline={'report': f"{scalars['num_stages']} stages, "
                          f"{scalars['figures_embedded']} figures, "
                          f"{scalars['megabytes']:g} MB"},
      files=dict(html=page,
                 headline=os.path.join(out_dir, report_lib.HEADLINE_NAME),
                 tables=os.path.join(out_dir, report_lib.TABLES_NAME)))
