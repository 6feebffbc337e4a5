r"""Train-step throughput of the Ribeiro et al. ResNet: JAX vs PyTorch.

One train step = forward with BatchNorm in training mode and dropout on,
binary cross-entropy with logits on a 0/1 target (one output), backward and
an Adam update (lr 1e-3); `--dropout_bits=32,8` also times, in the same
turns, a JAX step with `resnet.PackedDropout` (four masks per 32-bit
draw; row "jax/8b"). The JAX step is
`jax.jit` of `value_and_grad` plus optax.adam with mutable `batch_stats`,
its state donated (as training/train.py jits it). The PyTorch step runs
the same network, written here with channels-first
Conv1d/BatchNorm1d/MaxPool1d/Linear and the Flax model's explicit 'SAME'
padding, from the same weights and running statistics
on the same inputs, with `torch.set_num_threads(os.cpu_count())`. Before
timing, the script checks that the two compute the same function: logits in
eval mode (running statistics, no dropout), max |difference| printed, ~1e-5
in fp32. After the warm-up steps (and JAX's compile), the timed steps of the
two frameworks alternate (torch, jax, torch, ...), so that other jobs on a
shared machine slow both alike. It prints s/step (mean and fastest), ECGs/s,
CPU seconds per step, the FLOPs XLA counts for the compiled step, and JAX's
speed-up over PyTorch (the issue's goal: >= 1.5x in fp32). Last, the
compute floor: the step's FLOPs at this machine's fp32 matmul peak
(`bench_report.gemm_peak_gflops`), the fraction of it JAX reaches and the
largest speed-up over PyTorch that any fp32 implementation of these FLOPs
could reach here.

  .venv/bin/python experiments/benchmarks/resnet_step_bench.py \
      --presets=ribeiro --inputs=strip --batch_size=32 --steps=3

Presets: ribeiro (resnet.ResNetRibeiro, the published sizes), cpu
(resnet.ResNetCPU). Inputs: strip ([batch, 5000, 12], a 10-s strip at
500 Hz), beat ([batch, 600, 12], a median beat). A ribeiro step on strips at
batch 32 is 478 GFLOP as XLA counts it (454 without the zero taps of the
folded strided convolutions): 2-4 s per step per framework on a 2-core CPU,
about a minute for the default run. On a loaded machine the ratio moves a
lot from run to run (0.6x to 2x when the two were timed one after the
other, before the steps alternated): read the load averages printed, and
repeat.
"""

import os
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from factorecg_jax.models import resnet
from factorecg_jax.models import resnet_torch

import bench_report  # pylint: disable=g-bad-import-order

_BATCH = flags.DEFINE_integer('batch_size', 32, 'ECGs per step.')
_STEPS = flags.DEFINE_integer('steps', 3, 'Timed steps per framework.')
_WARMUP = flags.DEFINE_integer(
    'warmup', 1, 'Untimed steps per framework (after compiling, for JAX).'
)
_PRESETS = flags.DEFINE_list(
    'presets', 'ribeiro', 'ResNet presets to time: ribeiro, cpu.'
)
_INPUTS = flags.DEFINE_list(
    'inputs', 'strip', 'Input shapes to time: strip [B, 5000, 12], beat '
    '[B, 600, 12].'
)
_TORCH = flags.DEFINE_bool('torch', True, 'Also time the PyTorch network.')
_TORCH_THREADS = flags.DEFINE_integer(
    'torch_threads', 0, 'PyTorch intra-op threads; 0 for os.cpu_count().'
)
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of inputs and weights.')
_DROPOUT_BITS = flags.DEFINE_list(
    'dropout_bits', '32', 'Random bits per dropout unit of the JAX steps '
    'timed (in turn with PyTorch): 32 (nn.Dropout, framework "jax") and/or '
    '8, 16 (resnet.PackedDropout, "jax/8b"). PyTorch draws its own.')

PRESETS = {'ribeiro': resnet.ResNetRibeiro, 'cpu': resnet.ResNetCPU}
INPUTS = {'strip': 5000, 'beat': 600}
LEADS = 12
LR = 1e-3
NUM_COMPARED = 8  # ECGs whose eval-mode logits are compared


def _randomize_norms(variables, seed: int):
  """Replaces BatchNorm scales, biases and running stats by random values.

  Fresh ones (1, 0, mean 0, var 1) would make eval-mode BatchNorm nearly the
  identity, so the parity check would not test how they are copied.
  """
  rng = np.random.default_rng(seed)

  def draw(path, x):
    name = path[-1].key
    if name in ('scale', 'var'):
      return jnp.asarray(rng.uniform(0.5, 1.5, x.shape), x.dtype)
    if name in ('mean', 'bias') and x.ndim == 1 and 'norm' in path[-2].key:
      return jnp.asarray(0.1 * rng.standard_normal(x.shape), x.dtype)
    return x

  return jax.tree_util.tree_map_with_path(draw, variables)


def jax_stepper(model, variables, ecg, target, seed):
  """Compiles the JAX train step.

  Returns:
    `(step, info)`: `step()` runs one step to completion and returns its
    loss; `info` has 'params', 'compile_s' and 'flops'.
  """
  tx = optax.adam(LR)

  def train_step(params, batch_stats, opt_state, x, y, rng):
    def loss_fn(p):
      (logits, _), new_state = model.apply(
          {'params': p, 'batch_stats': batch_stats}, x, train=True,
          mutable=['batch_stats'], rngs={'dropout': rng})
      loss = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, y))
      return loss, new_state['batch_stats']

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), batch_stats, opt_state, loss

  params, batch_stats = variables['params'], variables['batch_stats']
  state = [params, batch_stats, tx.init(params), 0]
  rng = jax.random.key(seed + 1)
  t0 = time.perf_counter()
  compiled = jax.jit(train_step, donate_argnums=(0, 1, 2)).lower(
      *state[:3], ecg, target, rng).compile()
  info = dict(params=sum(x.size for x in jax.tree.leaves(params)),
              compile_s=time.perf_counter() - t0,
              flops=bench_report.xla_flops(compiled))

  def step():
    *state[:3], loss = compiled(*state[:3], ecg, target,
                                jax.random.fold_in(rng, state[3]))
    state[3] += 1
    # Blocking each step costs little next to a step of seconds, and times
    # each step on its own (the fastest is reported too).
    jax.block_until_ready(state[:3])
    return float(loss)

  return step, info


def torch_stepper(net, ecg: np.ndarray, target: np.ndarray):
  """The PyTorch train step of `net`, as `jax_stepper`'s."""
  # pylint: disable-next=g-import-not-at-top
  import torch
  from torch.nn import functional as F  # pylint: disable=g-import-not-at-top

  x = torch.from_numpy(np.ascontiguousarray(ecg.transpose(0, 2, 1)))
  y = torch.from_numpy(target)
  net.train()
  opt = torch.optim.Adam(net.parameters(), lr=LR)

  def step():
    opt.zero_grad(set_to_none=True)
    loss = F.binary_cross_entropy_with_logits(net(x), y)
    loss.backward()
    opt.step()
    return loss.item()  # eager CPU ops are done when they return

  info = dict(params=sum(w.numel() for w in net.parameters()), compile_s=0.0,
              flops=float('nan'))
  return step, info


def time_interleaved(steppers: dict) -> dict:
  """Warms up, then times the frameworks' steps in turn (A B A B ...).

  Alternating the steps gives both frameworks the same share of whatever
  else runs on a shared machine, which a run of A's steps then B's does not.

  Args:
    steppers: {framework: step function}.

  Returns:
    {framework: dict(step_s (mean), best_s, cpu_s (per step), loss, times)}.
  """
  for step in steppers.values():
    for _ in range(_WARMUP.value):
      step()
  times = {name: [] for name in steppers}
  cpu = dict.fromkeys(steppers, 0.0)
  loss = {}
  for _ in range(_STEPS.value):
    for name, step in steppers.items():
      t0, c0 = time.perf_counter(), time.process_time()
      loss[name] = step()
      times[name].append(time.perf_counter() - t0)
      cpu[name] += time.process_time() - c0
  return {name: dict(step_s=float(np.mean(t)), best_s=min(t),
                     cpu_s=cpu[name] / len(t), loss=loss[name], times=t)
          for name, t in times.items()}


def run_config(preset: str, inputs: str, torch_ok: bool) -> list[dict]:
  """Parity check and timings of one (preset, input) pair."""
  batch, length = _BATCH.value, INPUTS[inputs]
  rng = np.random.default_rng(_SEED.value)
  # ECG-scale inputs (mV); throughput does not depend on the values.
  ecg = (0.3 * rng.standard_normal((batch, length, LEADS))).astype(np.float32)
  target = rng.integers(0, 2, (batch, 1)).astype(np.float32)
  model = PRESETS[preset](num_outputs=1)
  variables = jax.jit(model.init)(
      jax.random.key(_SEED.value), jnp.zeros((1, length, LEADS)))
  variables = _randomize_norms(dict(variables), _SEED.value + 2)
  name = f'{preset}/{inputs}'
  print(f'\n{name}: [{batch}, {length}, {LEADS}], load average '
        f'{os.getloadavg()[0]:.1f}', flush=True)

  steppers, infos, parity = {}, {}, None
  if torch_ok:
    # pylint: disable-next=g-import-not-at-top
    import torch
    torch.manual_seed(_SEED.value)
    net = resnet_torch.torch_resnet(model, length, LEADS)
    # Copied before the JAX step donates (and overwrites) these buffers.
    resnet_torch.copy_flax_to_torch(net, variables)
    net.eval()
    with torch.no_grad():
      torch_logits = net(torch.from_numpy(np.ascontiguousarray(
          ecg[:NUM_COMPARED].transpose(0, 2, 1)))).numpy()
    jax_logits = np.asarray(jax.jit(
        lambda v, x: model.apply(v, x)[0])(variables, ecg[:NUM_COMPARED]))
    parity = float(np.max(np.abs(jax_logits - torch_logits)))
    print(f'  parity (eval mode, {NUM_COMPARED} ECGs): max |dlogit| '
          f'{parity:.2e}, max |logit| {np.max(np.abs(jax_logits)):.3g}')
    steppers['torch'], infos['torch'] = torch_stepper(net, ecg, target)
  bits_of = {}
  for bits in map(int, _DROPOUT_BITS.value):
    framework = 'jax' if bits == 32 else f'jax/{bits}b'
    bits_of[framework] = bits
    # Each step donates its state: every stepper gets its own copy.
    steppers[framework], infos[framework] = jax_stepper(
        model.clone(dropout_bits=bits), jax.tree.map(jnp.copy, variables),
        jnp.asarray(ecg), jnp.asarray(target), _SEED.value)
    print(f'  {framework}: compiled in {infos[framework]["compile_s"]:.1f} s',
          flush=True)
    if torch_ok and infos['torch']['params'] != infos[framework]['params']:
      raise RuntimeError(
          f'parameter counts differ: {infos["torch"]["params"]} (torch) vs '
          f'{infos[framework]["params"]} ({framework})')
  timed = time_interleaved(steppers)
  rows = []
  for framework, row in timed.items():
    row.update(infos[framework], framework=framework, config=name,
               preset=preset, inputs=inputs, length=length, batch_size=batch,
               parity=parity, dropout_bits=bits_of.get(framework))
    # The same network: the torch row takes the first JAX step's count.
    row['flops'] = infos[framework if framework in bits_of
                         else next(iter(bits_of))]['flops']
    steps = ', '.join(f'{t:.2f}' for t in row['times'])
    print(f'  {framework}: {row["step_s"]:.3f} s/step ({steps})')
    rows.append(row)
  print(f'  load average {os.getloadavg()[0]:.1f}', flush=True)
  return rows


def main(argv):
  del argv
  for given, known, what in ((_PRESETS.value, PRESETS, 'presets'),
                             (_INPUTS.value, INPUTS, 'inputs')):
    unknown = set(given) - set(known)
    if unknown:
      raise app.UsageError(f'Unknown {what} {sorted(unknown)}.')
  load_start = os.getloadavg()[0]
  torch_ok, threads = False, None
  if _TORCH.value:
    try:
      import torch  # pylint: disable=g-import-not-at-top
      torch.set_num_threads(_TORCH_THREADS.value or os.cpu_count())
      torch_ok, threads = True, torch.get_num_threads()
    except ImportError as e:
      print(f'PyTorch not timed: {e}')
  print(f'JAX {jax.__version__} on {jax.devices()[0].device_kind} '
        f'x{jax.device_count()}, {os.cpu_count()} CPUs, load average '
        f'{load_start:.1f}; batch {_BATCH.value}, {_WARMUP.value} '
        f'warm-up + {_STEPS.value} timed steps, torch threads {threads}, '
        f'dropout bits {",".join(_DROPOUT_BITS.value)}, '
        f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}')

  peak_start = bench_report.gemm_peak_gflops()  # again at the end; max kept
  rows = []
  for preset in _PRESETS.value:
    for inputs in _INPUTS.value:
      rows.extend(run_config(preset, inputs, torch_ok))

  batch = _BATCH.value
  header = (f'{"config":13s} {"framework":9s} {"params":>7s} {"s/step":>7s} '
            f'{"best s":>7s} {"ECG/s":>7s} {"cpu s":>6s} {"GFLOP":>6s} '
            f'{"GFLOP/s":>7s} {"jax/torch":>9s} {"(best)":>7s} '
            f'{"max|dlogit|":>11s}')
  print('\n' + header + '\n' + '-' * len(header))
  summary = []
  for r in rows:
    torch_row = next((q for q in rows if q['config'] == r['config']
                      and q['framework'] == 'torch'), None)
    ratio = (torch_row['step_s'] / r['step_s']
             if torch_row and r['framework'] != 'torch' else None)
    best_ratio = (torch_row['best_s'] / r['best_s'] if ratio else None)
    ratio_text = (f'{ratio:8.2f}x {best_ratio:6.2f}x' if ratio
                  else f'{"-":>9s} {"-":>7s}')
    parity = r['parity'] if r['parity'] is not None else float('nan')
    gflop = r['flops'] / 1e9
    print(f'{r["config"]:13s} {r["framework"]:9s} {r["params"] / 1e6:6.2f}M '
          f'{r["step_s"]:7.3f} {r["best_s"]:7.3f} {batch / r["step_s"]:7.1f} '
          f'{r["cpu_s"]:6.2f} {gflop:6.0f} {gflop / r["step_s"]:7.1f} '
          f'{ratio_text} {parity:11.2e}')
    summary.append(dict(
        config=r['config'], preset=r['preset'], inputs=r['inputs'],
        input_shape=[batch, r['length'], LEADS], framework=r['framework'],
        params=r['params'], step_s=r['step_s'], best_step_s=r['best_s'],
        ecg_per_s=batch / r['step_s'], cpu_s=r['cpu_s'],
        compile_s=r['compile_s'], gflop=gflop,
        gflop_per_s=gflop / r['step_s'], loss=r['loss'],
        step_times_s=r['times'],
        speedup_jax_over_torch=ratio,
        speedup_best_step=best_ratio, max_abs_logit_diff=r['parity'],
        dropout_bits=r['dropout_bits']))
  print('s/step: mean wall clock of the timed steps; best s: the fastest; '
        'cpu s: CPU seconds of this process per step '
        '(all threads); GFLOP: XLA cost analysis of the compiled JAX step '
        '(the same network for both); jax/torch: JAX ECGs/s over PyTorch '
        "ECGs/s (the issue's goal: >= 1.5x), (best) of the fastest steps; "
        'max|dlogit|: eval-mode logits, JAX vs PyTorch, from the same '
        'weights and running statistics.')

  # Roofline: the step's FLOPs at the machine's fp32 matmul peak.
  peak = max(peak_start, bench_report.gemm_peak_gflops())
  print(f'\nCompute floor: fp32 matmul peak of this machine {peak:.0f} '
        'GFLOP/s (XLA, 4096^2).')
  for r in summary:
    if r['framework'] == 'torch':
      continue
    floor = r['gflop'] / peak
    torch_row = next((q for q in summary if q['config'] == r['config']
                      and q['framework'] == 'torch'), None)
    bound = (f'; no fp32 step of these FLOPs can beat PyTorch here by more '
             f'than {torch_row["step_s"] / floor:.2f}x' if torch_row else '')
    print(f'  {r["config"]} {r["framework"]}: >= {floor:.3f} s/step; JAX at '
          f'{floor / r["step_s"]:.0%} of peak{bound}')
    r.update(floor_step_s=floor, fraction_of_peak=floor / r['step_s'],
             max_speedup_over_torch=(torch_row['step_s'] / floor
                                     if torch_row else None))

  bench_report.write('resnet_step_bench', {
      'batch_size': batch, 'warmup_steps': _WARMUP.value,
      'timed_steps': _STEPS.value, 'torch_threads': threads,
      'load_average_1min_start': load_start, 'gemm_peak_gflops': peak,
      'rows': summary})


if __name__ == '__main__':
  app.run(main)
