r"""Train-step throughput of the FactorECG VAE: JAX presets vs ecgxai (PyTorch).

One train step = forward, backward, global-norm clip 1 and Adam (lr 1e-3) on
the FactorECG loss (Gaussian NLL + 32 KL), at the published batch size 128.
For every JAX variant the script prints ECGs/s, the FLOPs XLA counts for the
compiled step (`cost_analysis`) and the achieved GFLOP/s. When torch and
ecgxai are importable it also times ecgxai's CausalCNNVEncoder/VDecoder step
at the identical configuration on the same inputs, starts the faithful JAX
variants from the same weights, and prints the largest difference of their
reconstructions (z = mu) from ecgxai's and each variant's speed-up.

  .venv/bin/python experiments/benchmarks/vae_step_bench.py \
      --batch_size=128 --steps=3 --variants=paper,paper_left

Variants: paper (ecgxai as published: pads both ends and chomps), paper_left
(same outputs, left padding only), paper_left_bf16 (bfloat16 compute),
transposed (transposed-conv decoder), conv_head (1x1 output heads, 4.8 M
parameters), lean (conv_head with 64 channels), demo (the model of
configs/demo.py: 16 channels, depth 5; timed here with the paper's loss).
Expect minutes per variant at batch 128 on a 2-core CPU (~1 TFLOP per paper
step); the issue quotes ~12 ECG/s for ecgxai there.
"""

import functools
import os
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from factorecg_jax import config_checks
from factorecg_jax import models
from factorecg_jax.models import vae
from factorecg_jax.training import losses

import bench_report  # pylint: disable=g-bad-import-order

_BATCH = flags.DEFINE_integer('batch_size', 128, 'ECGs per step.')
_STEPS = flags.DEFINE_integer('steps', 3, 'Timed steps per variant.')
_WARMUP = flags.DEFINE_integer('warmup', 1, 'Untimed steps after compiling.')
_VARIANTS = flags.DEFINE_list(
    'variants',
    'paper,paper_left,paper_left_bf16,transposed,conv_head,lean,demo',
    'JAX variants to time (see module docstring).',
)
_TORCH = flags.DEFINE_bool(
    'torch', True, 'Also time ecgxai (PyTorch) when it is importable.'
)
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of inputs and weights.')

DEMO_CONFIG = config_checks.load_config(
    os.path.join(os.path.dirname(__file__), '..', '..', 'configs', 'demo.py'))
VARIANTS = {
    'paper': vae.FactorECGPaper,
    'paper_left': vae.FactorECGPaperLeftPad,
    'paper_left_bf16': functools.partial(
        vae.FactorECGPaperLeftPad, dtype=jnp.bfloat16
    ),
    'transposed': vae.FactorECGTransposed,
    'conv_head': vae.FactorECGConvHead,
    'lean': vae.FactorECGLean,
    # The model of configs/demo.py (run from the repository root).
    'demo': lambda: models.MODELS[DEMO_CONFIG.model_name](**DEMO_CONFIG.model),
}
# Variants whose parameters are those of the published model.
PAPER_FAMILY = ('paper', 'paper_left', 'paper_left_bf16', 'transposed')
# Variants that compute ecgxai's function (their reconstructions are compared).
SAME_FUNCTION = ('ecgxai (torch)', 'paper', 'paper_left', 'paper_left_bf16')
# ecgxai 0.1.1 examples/vae/train_factorecg_vae.yaml.
ENCODER_KWARGS = dict(
    in_channels=12, channels=128, depth=7, reduced_size=64, out_channels=32,
    kernel_size=5, dropout=0.3, softplus_eps=1e-4, sd_output=True,
)
DECODER_KWARGS = dict(
    k=32, width=600, in_channels=64, channels=128, depth=7, out_channels=12,
    kernel_size=5, gaussian_out=True, softplus_eps=1e-4, dropout=0.0,
)
BETA, LR, CLIP = 32.0, 1e-3, 1.0
NUM_COMPARED = 8  # ECGs whose reconstructions are compared across variants


def time_jax_variant(name, params, ecg, seed):
  """Compiles and times one variant; returns a result row."""
  model = VARIANTS[name]()
  tx = optax.chain(optax.clip_by_global_norm(CLIP), optax.adam(LR))
  if params is None:
    # 'rbg' keys compile much faster on CPU than threefry; init is untimed.
    params = jax.jit(model.init, static_argnames='sample')(
        jax.random.key(seed, impl='rbg'), ecg[:1], sample=False
    )['params']
  params = jax.tree.map(jnp.asarray, params)
  recon = jax.jit(
      lambda p, x: model.apply({'params': p}, x, sample=False)[0]
  )(params, ecg[:NUM_COMPARED])

  def train_step(params, opt_state, batch, rng):
    (loss, _), grads = jax.value_and_grad(losses.vae_loss, has_aux=True)(
        params, batch, rng, model=model, beta=BETA
    )
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = tx.init(params)
  batch = {'ecg': ecg, 'mask': jnp.ones(ecg.shape[0], jnp.float32)}
  rng = jax.random.key(seed + 1)
  t0 = time.perf_counter()
  step = jax.jit(train_step, donate_argnums=(0, 1)).lower(
      params, opt_state, batch, rng
  ).compile()
  compile_s = time.perf_counter() - t0
  flops = bench_report.xla_flops(step)
  for _ in range(_WARMUP.value):
    params, opt_state, loss = step(params, opt_state, batch, rng)
  jax.block_until_ready(params)
  t0, c0 = time.perf_counter(), time.process_time()
  for i in range(_STEPS.value):
    params, opt_state, loss = step(
        params, opt_state, batch, jax.random.fold_in(rng, i)
    )
  jax.block_until_ready(loss)
  seconds = (time.perf_counter() - t0) / _STEPS.value
  cpu_seconds = (time.process_time() - c0) / _STEPS.value
  num_params = sum(x.size for x in jax.tree.leaves(params))
  return dict(
      name=name, params=num_params, step_s=seconds, cpu_s=cpu_seconds,
      compile_s=compile_s,
      flops=flops, loss=float(loss), recon=np.asarray(recon),
  )


def torch_reference(ecg: np.ndarray, seed: int):
  """ecgxai's model, its weights as JAX params, its recon and step time."""
  # pylint: disable=g-import-not-at-top
  import torch
  from ecgxai.network.causalcnn import decoder as ecgxai_decoder
  from ecgxai.network.causalcnn import encoder as ecgxai_encoder
  # pylint: enable=g-import-not-at-top

  torch.manual_seed(seed)
  encoder = ecgxai_encoder.CausalCNNVEncoder(**ENCODER_KWARGS)
  decoder = ecgxai_decoder.CausalCNNVDecoder(**DECODER_KWARGS)
  params = vae.params_from_ecgxai(
      encoder.state_dict(), decoder.state_dict(), length=ecg.shape[1]
  )
  x = torch.from_numpy(np.ascontiguousarray(ecg.transpose(0, 2, 1)))
  with torch.no_grad():
    recon, _ = decoder(encoder(x[:NUM_COMPARED])[0])
  recon = recon.numpy().transpose(0, 2, 1)

  weights = list(encoder.parameters()) + list(decoder.parameters())
  opt = torch.optim.Adam(weights, lr=LR)

  def step():
    # ecgxai GaussianVAE + CombinedLoss(GaussianVAEReconLoss, KLDivergence,
    # weights [1, 32], 'mean' reductions) + Lightning's gradient_clip_val=1.
    opt.zero_grad()
    mu, sd = encoder(x)
    z = mu + torch.randn_like(sd) * sd
    mean, rsd = decoder(z)
    nll = (0.5 * np.log(2 * np.pi) + 0.5 * rsd.pow(2).log()
           + 0.5 * (x - mean).pow(2) / rsd.pow(2)).sum(dim=(1, 2)).mean()
    mu_c, sd_c = mu.clip(-100, 100), sd.clip(1e-6, 100)
    kl = (-0.5 * (1 + sd_c.pow(2).log() - mu_c.pow(2) - sd_c.pow(2))).sum(1)
    loss = nll + BETA * kl.mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(weights, CLIP)
    opt.step()
    return loss.item()

  for _ in range(_WARMUP.value):
    step()
  t0, c0 = time.perf_counter(), time.process_time()
  for _ in range(_STEPS.value):
    loss = step()
  seconds = (time.perf_counter() - t0) / _STEPS.value
  row = dict(
      name='ecgxai (torch)', params=sum(w.numel() for w in weights),
      step_s=seconds, cpu_s=(time.process_time() - c0) / _STEPS.value,
      compile_s=0.0, flops=float('nan'), loss=loss,
      recon=recon,
  )
  return params, row, torch.get_num_threads()


def main(argv):
  del argv
  unknown = set(_VARIANTS.value) - set(VARIANTS)
  if unknown:
    raise app.UsageError(f'Unknown variants {sorted(unknown)}.')
  batch = _BATCH.value
  rng = np.random.default_rng(_SEED.value)
  # ECG-scale inputs (mV); throughput does not depend on the values.
  ecg = (0.3 * rng.standard_normal((batch, 600, 12))).astype(np.float32)
  print(f'JAX {jax.__version__} on {jax.devices()[0].device_kind} '
        f'x{jax.device_count()}, {os.cpu_count()} CPUs, load average '
        f'{os.getloadavg()[0]:.1f}; batch {batch}, {_STEPS.value} timed '
        f'steps, XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}')

  rows, reference, params = [], None, None
  if _TORCH.value:
    try:
      params, reference, threads = torch_reference(ecg, _SEED.value)
      print(f'ecgxai: {reference["step_s"]:.2f} s/step '
            f'({threads} torch threads)')
      rows.append(reference)
    except ImportError as e:
      print(f'ecgxai not timed: {e}')
  for name in _VARIANTS.value:
    start = params if name in PAPER_FAMILY else None
    row = time_jax_variant(name, start, jnp.asarray(ecg), _SEED.value)
    print(f'{name}: {row["step_s"]:.2f} s/step, compiled in '
          f'{row["compile_s"]:.0f} s', flush=True)
    rows.append(row)

  # Reconstructions of the paper family against ecgxai (or fp32 paper).
  base = reference or next((r for r in rows if r['name'] == 'paper'), None)
  header = (f'{"variant":16s} {"params":>8s} {"s/step":>7s} {"ECG/s":>7s} '
            f'{"cpu s":>6s} {"GFLOP":>6s} {"GFLOP/s":>7s} {"vs ecgxai":>9s} '
            f'{"max|dRecon|":>11s}')
  print('\n' + header + '\n' + '-' * len(header))
  for r in rows:
    ratio = (f'{reference["step_s"] / r["step_s"]:8.2f}x' if reference
             else f'{"-":>9s}')
    same = (base is not None and base is not r
            and r['name'] in SAME_FUNCTION)
    diff = np.max(np.abs(r['recon'] - base['recon'])) if same else np.nan
    print(f'{r["name"]:16s} {r["params"] / 1e6:7.1f}M {r["step_s"]:7.2f} '
          f'{batch / r["step_s"]:7.1f} {r["cpu_s"]:6.1f} '
          f'{r["flops"] / 1e9:6.0f} {r["flops"] / 1e9 / r["step_s"]:7.1f} '
          f'{ratio} {diff:11.2e}')
  print('s/step: wall clock; cpu s: CPU seconds of this process per step '
        '(all threads); GFLOP: XLA cost analysis of the compiled step; vs '
        'ecgxai: wall-clock speed-up.')
  if base is not None:
    print(f'max|dRecon|: largest |difference| of the reconstruction means '
          f'(z = mu, {NUM_COMPARED} ECGs, mV) from {base["name"]}, for the '
          'variants that compute the same function.')
  summary = []
  for r in rows:
    same = (base is not None and base is not r
            and r['name'] in SAME_FUNCTION)
    summary.append(dict(
        name=r['name'], params=r['params'], step_s=r['step_s'],
        ecg_per_s=batch / r['step_s'], cpu_s=r['cpu_s'],
        gflop=r['flops'] / 1e9, gflop_per_s=r['flops'] / 1e9 / r['step_s'],
        speedup_vs_ecgxai=(reference['step_s'] / r['step_s']
                           if reference else None),
        max_abs_recon_diff_mv=(float(np.max(np.abs(r['recon'] - base['recon'])))
                               if same else None)))
  for r in rows:
    if r['name'] == 'paper_left_bf16':
      fp32 = next((q for q in rows if q['name'] == 'paper_left'), base)
      if fp32 is not None:
        d = np.abs(r['recon'] - fp32['recon'])
        scale = np.max(np.abs(fp32['recon']))
        print(f'bf16 vs fp32 reconstruction: max |d| {d.max():.3g} mV, mean '
              f'|d| {d.mean():.3g} mV (max |recon| {scale:.3g} mV)')

  bench_report.write('vae_step_bench', {
      'batch_size': batch, 'timed_steps': _STEPS.value, 'rows': summary})


if __name__ == '__main__':
  app.run(main)
