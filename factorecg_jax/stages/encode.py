"""Stage `encode`: the factors of held-out records, with KL selection.

Encodes the first `analysis.num_records` records of `analysis.split` with the
latest checkpoint (inputs normalised as in training) and writes
`<workdir>/factors/`: `factors_<split>.npz` (mu, sd [n, D] float32, ids,
index [n], kl_per_dim [D], active_factors, and for simulated data the true
factors [n, 14] and labels [n, 16] with their names), the same as a CSV,
`kl_per_dim.png` and the stage summary.
"""

from typing import Any

import ml_collections

from factorecg_jax import stages
from factorecg_jax.stages import _common


def is_vae(config: ml_collections.ConfigDict) -> bool:
  return config.get('task') == 'vae'


@stages.register('encode', requires=(stages.TRAIN,), order=20,
                 folder=_common.FACTORS_DIR, applies=is_vae,
                 description='factors of held-out records, active by KL')
def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Encodes the analysis split; returns the stage summary."""
  _common.check_single_process('encode')
  model, params, step = _common.restore(config, workdir)
  _, summary = _common.encode_and_save(config, workdir, model, params, step)
  return summary
