"""Seconds per ECG of the nine attribution methods and of deletion scoring.

JAX (`factorecg_jax.explain`) against Captum 0.9 (attributions) and
Quantus 0.6's PixelFlipping (evaluation) on the same network, weights and
inputs, in the same run:

  python experiments/benchmarks/explain_bench.py            # Ribeiro ResNet
  python experiments/benchmarks/explain_bench.py --preset=cpu --records=2

Network: `resnet.ResNetRibeiro` (6.8 M parameters in the convolutions) or
`ResNetCPU`, 9 regression outputs, on median beats [600, 12] (Storås's
input) or 10-s strips, random weights with random BatchNorm statistics (a
timing needs no training), copied into the PyTorch twin
(`models/resnet_torch.py`; outputs checked equal).

Attributions, one target per record (Captum's unit of work), at the
50-sample settings: IG 50 Gauss-Legendre steps, GradientSHAP 50 samples,
SmoothGrad (NoiseTunnel over Saliency) 50 samples; DeepLIFT with a zero
baseline; GradCAM on the last block, upsampled linearly. Each method is
timed on its own (compiled once, then `--repeats` timed calls) and all
nine together (`methods.explain_all`, which shares one backward pass
between Saliency, Input x Gradient and GradCAM); JAX also all nine outputs
in one call (vmapped over targets), which Captum cannot do. Equality: the
Pearson correlation of the JAX and Captum maps per method (the
deterministic methods should give 1.0000; the stochastic ones differ by
their random draws; `tests/explain/captum_parity_test.py` checks them with
shared draws).

Evaluation: deletion of (lead, time) points most relevant first, zero fill,
`--eval_steps` steps (24: 300 points each), for all nine maps of `--eval_records` records:
`evaluation.perturbation_curves` (one jitted call over methods x steps)
against `quantus.PixelFlipping(features_in_step=7200 / steps, abs=True,
perturb_baseline=0.0)` (zero fill) run per method; the two curves are compared
(max |difference| over the predictions; ours treats relevances equal to 6
decimals of the row maximum as ties, kept in index order, Quantus sorts the
raw values, so near-ties are removed in another order).

Last, the compute floor: the FLOPs XLA counts for the nine methods and for
the deletion forward passes, at this machine's fp32 matmul peak, and the
largest speed-up over Captum / Quantus that any fp32 implementation of
those FLOPs could reach here.

Prints a table and writes runs/benchmarks/explain_bench.json.
"""

import os
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from factorecg_jax.explain import evaluation
from factorecg_jax.explain import methods
from factorecg_jax.models import resnet
from factorecg_jax.models import resnet_torch

import bench_report  # pylint: disable=g-bad-import-order

_PRESET = flags.DEFINE_enum('preset', 'ribeiro', ['ribeiro', 'cpu'],
                            'Network size.')
_LENGTH = flags.DEFINE_integer('length', 600, 'Samples (600 beat, 5000 '
                               'strip).')
_RECORDS = flags.DEFINE_integer('records', 4, 'ECGs per attribution call.')
_SAMPLES = flags.DEFINE_integer('samples', 50, 'IG steps / SHAP and '
                                'SmoothGrad samples.')
_CHUNK = flags.DEFINE_integer(
    'chunk_size', 0, 'JAX samples per pass (0: all at once, as Captum).')
_REPEATS = flags.DEFINE_integer('repeats', 2, 'Timed calls per method.')
_EVAL_RECORDS = flags.DEFINE_integer('eval_records', 4, 'ECGs scored.')
_EVAL_STEPS = flags.DEFINE_integer(
    'eval_steps', 24, 'Deletion steps (7200 / steps must divide 600).')
_TORCH_THREADS = flags.DEFINE_integer('torch_threads', 0,
                                      'torch threads (0: all CPUs).')
_SKIP_CAPTUM = flags.DEFINE_bool('skip_captum', False, 'JAX only.')

LEADS, OUTPUTS = 12, 9
METHODS = methods.METHOD_NAMES


def _settings(samples: int) -> dict:
  return {
      'saliency': methods.SaliencySettings(absolute=True),
      'deconvolution': None,
      'guided_backprop': None,
      'gradient_shap': methods.GradientShapSettings(
          n_samples=samples, stdev=0.0, multiply_by_inputs=True),
      'smoothgrad': methods.SmoothGradSettings(
          n_samples=samples, stdev=0.1, relative=False, absolute=True,
          nt_type='smoothgrad'),
      'input_x_gradient': None,
      'deeplift': methods.DeepLiftSettings(multiply_by_inputs=True),
      'integrated_gradients': methods.IntegratedGradientsSettings(
          n_steps=samples, method='gausslegendre', multiply_by_inputs=True),
      'gradcam': methods.GradCamSettings(relu=False),
  }


def _randomize_norms(variables, seed: int):
  """Random BN affine parameters and running statistics."""
  def draw(path, leaf):
    name = getattr(path[-1], 'key', '')
    k = jax.random.fold_in(jax.random.key(seed), hash(str(path)) % 2**31)
    if name == 'scale':
      return jax.random.uniform(k, leaf.shape, minval=0.5, maxval=1.5)
    if name in ('bias', 'mean'):
      return 0.2 * jax.random.normal(k, leaf.shape)
    if name == 'var':
      return jax.random.uniform(k, leaf.shape, minval=0.5, maxval=2.0)
    return leaf
  return jax.tree_util.tree_map_with_path(draw, variables)


def _time(fn, repeats: int) -> float:
  fn()  # compile / warm up
  start = time.perf_counter()
  for _ in range(repeats):
    fn()
  return (time.perf_counter() - start) / repeats


def _captum_fns(torch, captum_attr, net, samples, x_t, target_t):
  zeros = torch.zeros_like(x_t)
  return {
      'saliency': lambda: captum_attr.Saliency(net).attribute(
          x_t, target=target_t, abs=True),
      'deconvolution': lambda: captum_attr.Deconvolution(net).attribute(
          x_t, target=target_t),
      'guided_backprop': lambda: captum_attr.GuidedBackprop(net).attribute(
          x_t, target=target_t),
      'gradient_shap': lambda: captum_attr.GradientShap(net).attribute(
          x_t, baselines=zeros[:1], target=target_t, n_samples=samples,
          stdevs=0.0),
      'smoothgrad': lambda: captum_attr.NoiseTunnel(
          captum_attr.Saliency(net)).attribute(
              x_t, nt_type='smoothgrad', nt_samples=samples, stdevs=0.1,
              target=target_t, abs=True),
      'input_x_gradient': lambda: captum_attr.InputXGradient(net).attribute(
          x_t, target=target_t),
      'deeplift': lambda: captum_attr.DeepLift(net).attribute(
          x_t, baselines=zeros, target=target_t),
      'integrated_gradients': lambda: captum_attr.IntegratedGradients(
          net).attribute(x_t, baselines=zeros, target=target_t,
                         n_steps=samples, method='gausslegendre'),
      'gradcam': lambda: captum_attr.LayerAttribution.interpolate(
          captum_attr.LayerGradCam(net, net.blocks[-1].relu2).attribute(
              x_t, target=target_t, relu_attributions=False),
          (x_t.shape[-1],), 'linear'),
  }


def main(argv):
  del argv
  preset = resnet.ResNetRibeiro if _PRESET.value == 'ribeiro' else (
      resnet.ResNetCPU)
  model = preset(num_outputs=OUTPUTS, dropout_rate=0.0)
  n, length, samples = _RECORDS.value, _LENGTH.value, _SAMPLES.value
  x = np.asarray(jax.random.normal(jax.random.key(1), (n, length, LEADS)),
                 np.float32) * 0.3
  variables = model.init(jax.random.key(0), x[:1])
  variables = jax.device_get(_randomize_norms(dict(variables), 2))
  num_params = sum(v.size for v in jax.tree.leaves(variables['params']))
  fn = methods.from_flax(model)
  target = jnp.arange(n, dtype=jnp.int32) % OUTPUTS
  settings = _settings(samples)
  chunk = _CHUNK.value or None
  load_start = os.getloadavg()[0]
  print(f'JAX {jax.__version__} on {jax.devices()[0].device_kind}, '
        f'{os.cpu_count()} CPUs, load {load_start:.1f}; {_PRESET.value} '
        f'ResNet ({num_params / 1e6:.2f} M params), x [{n}, {length}, '
        f'{LEADS}], {samples} samples, chunk {chunk}')

  peak_start = bench_report.gemm_peak_gflops()  # again at the end; max kept
  results = {'config': dict(preset=_PRESET.value, num_params=num_params,
                            records=n, length=length, samples=samples,
                            chunk_size=chunk, repeats=_REPEATS.value)}
  ours = {}
  rows = []

  def jax_call(name):
    return lambda: jax.block_until_ready(methods.attribute(
        name, fn, variables, x, target, settings[name],
        key=jax.random.key(3), chunk_size=chunk))

  for name in METHODS:
    sec = _time(jax_call(name), _REPEATS.value)
    ours[name] = np.asarray(jax_call(name)())
    rows.append(dict(method=name, jax_s_per_ecg=sec / n))
    print(f'  jax {name:22s} {sec / n:8.4f} s/ECG', flush=True)
  all_one = _time(lambda: jax.block_until_ready(methods.explain_all(
      fn, variables, x, target=target, preset=settings,
      key=jax.random.key(3), chunk_size=chunk)), _REPEATS.value)
  all_targets = _time(lambda: jax.block_until_ready(methods.explain_all(
      fn, variables, x, target=None, preset=settings, key=jax.random.key(3),
      chunk_size=chunk)), 1)
  print(f'  jax all nine (one target)   {all_one / n:8.4f} s/ECG; all nine '
        f'x {OUTPUTS} targets {all_targets / n:8.4f} s/ECG '
        f'({all_targets / n / OUTPUTS:.4f} per target)')
  results.update(jax_all_nine_s_per_ecg=all_one / n,
                 jax_all_nine_all_targets_s_per_ecg=all_targets / n)

  captum_ok = not _SKIP_CAPTUM.value
  if captum_ok:
    try:
      # pylint: disable=g-import-not-at-top
      import torch
      from captum import attr as captum_attr
      import quantus
      # pylint: enable=g-import-not-at-top
    except ImportError as e:
      print(f'Captum/Quantus not timed: {e}')
      captum_ok = False
  if captum_ok:
    import warnings  # pylint: disable=g-import-not-at-top
    warnings.filterwarnings('ignore', module='captum')
    torch.set_num_threads(_TORCH_THREADS.value or os.cpu_count())
    net = resnet_torch.copy_flax_to_torch(
        resnet_torch.torch_resnet(model, length, LEADS), variables).eval()
    x_t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 1)))
    target_t = torch.from_numpy(np.asarray(target, np.int64))
    with torch.no_grad():
      diff = float(np.max(np.abs(
          net(x_t).numpy() - np.asarray(fn.forward(variables, x)))))
    print(f'  outputs: max |JAX - torch| = {diff:.2e}; torch threads '
          f'{torch.get_num_threads()}')
    results['output_max_abs_diff'] = diff
    fns = _captum_fns(torch, captum_attr, net, samples, x_t, target_t)
    total = 0.0
    for row in rows:
      name = row['method']
      sec = _time(fns[name], _REPEATS.value)
      theirs = fns[name]().detach().numpy()
      if name == 'gradcam':
        theirs = np.broadcast_to(theirs[:, 0][..., None],
                                 ours[name].shape)
      else:
        theirs = theirs.transpose(0, 2, 1)
      corr = float(np.corrcoef(np.ravel(ours[name]), np.ravel(theirs))[0, 1])
      total += sec
      row.update(captum_s_per_ecg=sec / n,
                 speedup=sec / n / row['jax_s_per_ecg'], correlation=corr)
      print(f'  captum {name:19s} {sec / n:8.4f} s/ECG  x{row["speedup"]:6.2f}'
            f'  r = {corr:.5f}', flush=True)
    results.update(captum_all_nine_s_per_ecg=total / n,
                   all_nine_speedup=total / all_one,
                   all_targets_speedup_per_target=total * OUTPUTS
                   / all_targets)
    print(f'  captum all nine             {total / n:8.4f} s/ECG  '
          f'x{total / all_one:6.2f} (JAX all nine, one target); '
          f'x{total * OUTPUTS / all_targets:6.2f} per target (all targets)')

  # Evaluation: deletion curves of all nine maps.
  ne, steps = min(_EVAL_RECORDS.value, n), _EVAL_STEPS.value
  features = length * LEADS
  step_size = -(-features // steps)
  if features % steps or length % step_size:
    # Quantus checks the step against the time axis alone.
    raise app.UsageError(f'--eval_steps={steps}: {features} points / steps '
                         f'must be a whole number dividing {length}.')
  a = np.stack([np.abs(ours[m][:ne]) for m in METHODS])  # [M, B, T, L]
  xe, te = x[:ne], np.asarray(target[:ne])

  @jax.jit
  def predict(xx):
    return fn.forward(variables, xx)

  fractions = np.minimum(np.arange(steps + 1) * step_size, features) / features
  run_ours = lambda: evaluation.perturbation_curves(
      predict, xe, a, te, unit='point', fill='zero', fractions=fractions,
      chunk_size=64)
  sec_ours = _time(run_ours, 1)
  curves = run_ours()['curve']  # [M, B, F]
  print(f'  jax deletion ({steps} steps, 9 methods) '
        f'{sec_ours / ne / len(METHODS):8.4f} s per ECG and method')
  results['jax_deletion_s_per_ecg_method'] = sec_ours / ne / len(METHODS)
  if captum_ok:
    metric = quantus.PixelFlipping(
        features_in_step=step_size, abs=True, normalise=False,
        perturb_baseline=0.0, disable_warnings=True)
    xq = np.ascontiguousarray(xe.transpose(0, 2, 1))

    def run_quantus():
      out = []
      for i in range(len(METHODS)):
        out.append(metric(model=net, x_batch=xq, y_batch=te,
                          a_batch=np.ascontiguousarray(
                              a[i].transpose(0, 2, 1)),
                          softmax=False, device='cpu',
                          channel_first=True))
      return out

    sec_q = _time(run_quantus, 1)
    q = np.asarray(run_quantus(), np.float64)  # [M, B, steps]
    # GradCAM's map is equal across leads: its ties are broken in a
    # different flat order (time-major here, lead-major in Quantus).
    gaps = {m: float(np.max(np.abs(q[i] - curves[i, :, 1:])))
            for i, m in enumerate(METHODS)}
    gap = max(v for m, v in gaps.items() if m != 'gradcam')
    print(f'  quantus PixelFlipping        {sec_q / ne / len(METHODS):8.4f} '
          f's per ECG and method  x{sec_q / sec_ours:6.1f}; max |curve '
          f'difference| {gap:.2e} (gradcam, tie order: '
          f"{gaps['gradcam']:.2e})")
    results.update(quantus_s_per_ecg_method=sec_q / ne / len(METHODS),
                   evaluation_speedup=sec_q / sec_ours,
                   evaluation_max_curve_diff=gap,
                   evaluation_curve_diff_per_method=gaps)
  # Roofline: the FLOPs XLA counts at this machine's fp32 matmul peak.
  peak = max(peak_start, bench_report.gemm_peak_gflops())
  nine_flops = bench_report.xla_flops(jax.jit(
      lambda v, xx: methods.explain_all(
          fn, v, xx, target=target, preset=settings, key=jax.random.key(3),
          chunk_size=None)).lower(variables, x).compile())
  forward_flops = bench_report.xla_flops(
      jax.jit(predict).lower(xe[:1]).compile())
  floors = {'all_nine': nine_flops / n / peak / 1e9,
            'deletion': forward_flops * len(fractions) / peak / 1e9}
  print(f'  compute floor (fp32 matmul peak {peak:.0f} GFLOP/s): all nine '
        f'>= {floors["all_nine"]:.4f} s/ECG (JAX at '
        f'{floors["all_nine"] * n / all_one:.0%} of peak), deletion >= '
        f'{floors["deletion"]:.4f} s per ECG and method (JAX at '
        f'{floors["deletion"] * ne * len(METHODS) / sec_ours:.0%})')
  if captum_ok:
    print(f'  so no fp32 implementation of these FLOPs beats Captum by more '
          f'than x{total / n / floors["all_nine"]:.2f} (all nine) or '
          f'Quantus by more than '
          f'x{sec_q / ne / len(METHODS) / floors["deletion"]:.2f} '
          '(deletion) on this machine')
  results.update(gemm_peak_gflops=peak, all_nine_gflop_per_ecg=nine_flops
                 / n / 1e9, forward_gflop_per_ecg=forward_flops / 1e9,
                 floor_all_nine_s_per_ecg=floors['all_nine'],
                 floor_deletion_s_per_ecg_method=floors['deletion'])
  results['methods'] = rows
  results['load_average_end'] = os.getloadavg()[0]
  path = bench_report.write('explain_bench', results)
  print(f'wrote {path}')


if __name__ == '__main__':
  app.run(main)
