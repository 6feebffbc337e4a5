"""The CPU demo: simulate a data set, train a small FactorECG VAE, explain it.

`make demo` runs this end to end on 2 CPU cores in a few minutes:

  python -m factorecg_jax.main --config=configs/demo.py --workdir=runs/demo \
      --mode=demo

It writes to the workdir: simulated-data summary (figures, tables), the
training run (config.json, metrics.jsonl, checkpoints), factors of held-out
records, traversal figures and disentanglement metrics. The model is the lean
variant of the paper's architecture (1x1-conv Gaussian head, fewer channels);
the paper's own settings are configs/factorecg_paper.py.
"""

import importlib.util
import os

import ml_collections


def _load_sibling(name):
  # Config files are loaded by path (absl config_flags), not as a package.
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), name + '.py')
  spec = importlib.util.spec_from_file_location(f'configs_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


factorecg_paper = _load_sibling('factorecg_paper')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = factorecg_paper.get_config()
  config.model.update(latents=32, channels=32, depth=4, kernel_size=5,
                      reduced_size=32, decoder_in_channels=32, head='conv',
                      padding='left')
  config.loss.beta = 4.0  # gentler KL for a few hundred CPU steps
  config.data.update(num_train=20_000, num_eval=1_000, mode='uniform')
  config.optim.update(lr=2e-3, schedule='cosine', warmup_steps=50)
  config.train.update(batch_size=64, num_epochs=0, num_steps=600,
                      log_every=50, eval_every=300, checkpoint_every=300,
                      eval_batch_size=250)
  config.analysis.update(num_records=1000, metrics_num_train=2000,
                         metrics_num_test=1000, intervention_num_train=1000,
                         intervention_num_eval=500,
                         intervention_num_variance_estimate=2000)
  # Simulated-data summary of --mode=simulate / demo.
  config.simulate = ml_collections.ConfigDict(dict(
      num_records=2000, mode='uniform', strips=4))
  if arg == 'tiny':
    config.model.update(latents=4, channels=8, depth=2, kernel_size=3,
                        reduced_size=8, decoder_in_channels=4)
    config.data.update(num_train=256, num_eval=64, prefetch=0,
                       normalization_records=64)
    config.train.update(batch_size=16, num_steps=4, log_every=2,
                        eval_every=4, checkpoint_every=2, eval_batch_size=32)
    config.optim.warmup_steps = 0
    config.simulate.update(num_records=64, strips=1)
    config.analysis.update(num_records=64, metrics_num_train=200,
                           metrics_num_test=100, intervention_batch_size=8,
                           intervention_num_train=40,
                           intervention_num_eval=40,
                           intervention_num_variance_estimate=128)
  elif arg:
    raise ValueError(f'unknown config variant {arg!r} (known: tiny)')
  return config
