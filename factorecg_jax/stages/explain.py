"""Stage `explain`: the nine attribution methods on the measures ResNet, scored.

Storås et al. (JAMIA 2025) regressed ECG intervals and amplitudes with a
residual network, drew gradient explanations as heatmaps and scored them by
perturbation. This stage does the same on the simulator, which also knows
where the evidence for every target lies (ECG_DOMAIN.md section 5):

1. the regression ResNet: the run itself (`configs/resnet.py:measures`, whose
   task regresses `simulator.MEASURE_NAMES`), or, in a VAE experiment, a
   ResNet trained here in `<workdir>/explain/resnet_<input>/` (resumable,
   skipped when trained; sizes from `config.explain`);
2. `explain.num_records` held-out records (the validation split, as the
   model was evaluated), their attributions by every method of
   `explain.preset` for all targets at once (`methods.explain_all`);
3. per target: deletion AOPC (most relevant first, `explain.fill`), the
   ROAD variant (noisy linear imputation), Storås's iterative-noise area,
   and the ground-truth scores inside the target's true region (relevance
   mass accuracy, rank accuracy, pointing game; beats only); a ranking
   table with bootstrap CIs and Kendall's tau between the perturbation and
   the ground-truth rankings;
4. the sanity check: cascading parameter randomisation (Spearman to the
   original maps per randomised layer);
5. IG and DeepLIFT completeness errors (with multiply-by-inputs);
6. figures (methods side by side, the best method's heatmap, deletion
   curves, rankings) and the blinded review page (`review/review.html`,
   its key beside it).

Outputs under `<workdir>/explain/`: summary.json, ranking.md, scores.npz
(per-record scores), attributions.npz (the figure records' maps), figures.
"""

import functools
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from factorecg_jax import console
from factorecg_jax import stages
from factorecg_jax.analysis import ranking
from factorecg_jax.data import simulator
from factorecg_jax.data import sources
from factorecg_jax.stages import blackbox
from factorecg_jax.stages import encode

FOLDER = 'explain'
MEASURES_KEY = 'measures'
# Measures of the ranking: name -> (higher is better, needs ground truth).
MEASURES = {
    'AOPC': (True, False),
    'AOPC (ROAD)': (True, False),
    'Storås area': (True, False),
    'mass accuracy': (True, True),
    'rank accuracy': (True, True),
    'pointing game': (True, True),
}
PERTURBATION_MEASURE = 'AOPC'
# The random control's name in the review key.
REVIEW_RANDOM = 'random_control'
GROUND_TRUTH_MEASURE = 'mass accuracy'


def _is_measures_run(config: ml_collections.ConfigDict) -> bool:
  return (config.get('task') == 'regress'
          and config.get('loss', {}).get('target_key') == MEASURES_KEY)


def default_config() -> ml_collections.ConfigDict:
  """`config.explain` defaults (the paper config's block)."""
  return ml_collections.ConfigDict(dict(
      input='beat',  # 'beat' (Storås's input) or 'strip' (no ground truth)
      num_train=0,  # ResNet training records (0: the ResNet config's own)
      num_steps=0,  # ResNet steps (0: the ResNet config's own)
      variant=(),  # configs/resnet.py modifiers, e.g. ('tiny',)
      num_records=64,  # held-out records explained and scored
      targets=(),  # model outputs scored (names); () for all of them
      preset='storas2025',
      chunk_size=25,  # IG / SmoothGrad / GradientSHAP samples per pass
      fill='linear',  # deletion fill (evaluation.FILLS)
      num_fractions=20,  # deletion grid 0, 1/20, ..., 1
      storas_endpoints=(5, 10, 15, 25),
      storas_area=10,  # the endpoint ranked ('Storås area')
      num_resamples=2000,  # bootstrap of the ranking CIs
      randomisation_methods=('saliency', 'integrated_gradients', 'gradcam'),
      randomisation_records=8,
      completeness_records=8,  # IG / DeepLIFT completeness (0 skips it)
      figure_targets=('pr_ms', 'qrs_ms', 'qt_ms'),
      review_records=2,
      review_targets=('pr_ms', 'qrs_ms', 'qt_ms'),
      eval_chunk=256,  # perturbed inputs per model call
  ))


def applies(config: ml_collections.ConfigDict) -> bool:
  if _is_measures_run(config):
    return True
  return (encode.is_vae(config) and 'explain' in config
          and bool(config.explain.get('num_records', 0)))


def _settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  out = default_config()
  if 'explain' in config:
    out.update(config.explain)
  return out


def model_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The run directory of the explained ResNet."""
  if _is_measures_run(config):
    return workdir
  return os.path.join(workdir, FOLDER, f'resnet_{_settings(config).input}')


def resnet_config(config: ml_collections.ConfigDict
                  ) -> ml_collections.ConfigDict:
  """The measures ResNet of a VAE experiment, on the run's population."""
  ex = _settings(config)
  bb = config.get('blackbox', {})
  sizes = dict(config=bb.get('config', 'configs/resnet.py'),
               variant=tuple(ex.variant), num_train=int(ex.num_train),
               num_steps=int(ex.num_steps))
  return blackbox.resnet_config(config, MEASURES_KEY, ex.input, sizes=sizes,
                                num_eval=max(int(ex.num_records), 1))


def _ensure_trained(config, workdir) -> str:
  from factorecg_jax.training import train  # pylint: disable=g-import-not-at-top
  directory = model_dir(config, workdir)
  if _is_measures_run(config):
    return directory
  cfg = resnet_config(config)
  if stages.training_complete(cfg, directory):
    console.info('  measures ResNet: trained, skipped')
  else:
    console.info(f'  training the measures ResNet in {directory}')
    train.train_and_evaluate(cfg, directory)
  return directory


def _records(run_config, num: int, input_key: str) -> dict[str, np.ndarray]:
  data = run_config.data
  fields = tuple(dict.fromkeys((input_key, 'beat', 'factors', MEASURES_KEY)))
  return sources.simulate_batch(
      int(data.get('seed', 0)), 'validation', np.arange(num),
      mode=data.get('mode', 'uniform'), fields=fields,
      rr_std=float(data.get('rr_std', 0.05)),
      survival_model=data.get('survival_model', 'age_sex'))


def _layer_order(params: dict[str, Any]) -> list[str]:
  """Top-level modules from the output to the input (randomisation order)."""
  names = list(params)
  blocks = sorted((n for n in names if n.startswith('blocks_')),
                  key=lambda n: int(n.split('_')[1]), reverse=True)
  head = [n for n in names if n not in blocks and n != 'stem']
  return head + blocks + (['stem'] if 'stem' in names else [])


def _target_names(run_config) -> tuple[str, ...]:
  names = tuple(run_config.loss.get('target_names', ()) or ())
  return names or tuple(simulator.MEASURE_NAMES)


def _scores_for_target(evaluation, predict, x, maps, k, masks, y_true, ex,
                       key):
  """Per-record scores [M, B] of every measure for target index k."""
  out = {}
  common = dict(mode='deletion', order='morf',
                num_steps=int(ex.num_fractions), chunk_size=int(ex.eval_chunk))
  deletion = evaluation.perturbation_curves(
      predict, x, maps, k, fill=ex.fill, key=key, **common)
  out['AOPC'] = deletion['aopc_abs']
  road = evaluation.perturbation_curves(
      predict, x, maps, k, fill='road', key=key, **common)
  out['AOPC (ROAD)'] = road['aopc_abs']
  rand = evaluation.perturbation_curves(
      predict, x, maps[:1], k, fill=ex.fill, key=key,
      **dict(common, order='random'))
  endpoints = tuple(int(e) for e in ex.storas_endpoints)
  # Their definition: error against the true value, |y - f(x_j)| / |y|.
  storas = evaluation.storas_curves(
      predict, x, maps, k, key, y_true=y_true, endpoints=endpoints,
      chunk_size=int(ex.eval_chunk))
  area_index = endpoints.index(int(ex.storas_area))
  out['Storås area'] = storas['area'][..., area_index]
  if masks is not None:
    out['mass accuracy'] = evaluation.relevance_mass_accuracy(
        maps, masks, sign='abs')
    out['rank accuracy'] = evaluation.relevance_rank_accuracy(
        maps, masks, sign='abs')
    out['pointing game'] = evaluation.pointing_game(maps, masks, sign='abs')
  curves = dict(fractions=deletion['fractions'],
                morf=np.abs(deletion['base'][None, :, None]
                            - deletion['curve']),
                random=np.abs(rand['base'][None, :, None] - rand['curve'])[0])
  return out, curves


@stages.register('explain', requires=(stages.TRAIN, 'blackbox'), order=70,
                 folder=FOLDER, applies=applies,
                 description='nine attribution methods on the measures '
                 'ResNet, scored by perturbation and ground truth')
def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Explains the measures ResNet and ranks the methods; returns the summary."""
  # pylint: disable=g-import-not-at-top
  from factorecg_jax.explain import evaluation
  from factorecg_jax.explain import ground_truth
  from factorecg_jax.explain import methods
  from factorecg_jax.explain import presets
  from factorecg_jax.explain import review
  from factorecg_jax.training import restore as restore_lib
  from factorecg_jax.training import train
  from factorecg_jax.viz import ecg_plot
  from factorecg_jax.viz import heatmaps
  # pylint: enable=g-import-not-at-top
  ex = _settings(config)
  out_dir = os.path.join(workdir, FOLDER)
  directory = _ensure_trained(config, workdir)
  clock = _Clock()
  restored = restore_lib.restore(directory)
  run_config = restored.config
  input_key = run_config.data.get('input_key', 'beat')
  names = _target_names(run_config)
  mean = np.asarray(run_config.loss.get('target_mean', (0.0,)), np.float32)
  std = np.asarray(run_config.loss.get('target_std', (1.0,)), np.float32)
  n = int(ex.num_records)
  rec = _records(run_config, n, input_key)
  clock.lap(f'{n} held-out records')
  x = jnp.asarray(restored.normalizer(np.asarray(rec[input_key], np.float32)))
  fn = methods.from_flax(restored.model)
  variables = jax.device_get(restored.variables)

  @jax.jit
  def predict(xx):  # [N, T, L] -> [N, K] in physical units
    return fn.forward(variables, xx) * std + mean

  scored = tuple(ex.targets) or names
  unknown = [t for t in scored if t not in names]
  if unknown:
    raise ValueError(f'explain.targets {unknown} are not outputs of the '
                     f'model in {directory}: {names}')
  key = jax.random.key(int(config.get('seed', 0)))
  explain_kw = dict(preset=ex.preset, key=key, chunk_size=int(ex.chunk_size))
  if scored == names:  # All targets in one call (vmapped over outputs).
    progress = console.Progress(1, 'attributions (all methods, all targets)',
                                unit='call')
    maps_all = jax.block_until_ready(methods.explain_all(
        fn, variables, x, target=None, **explain_kw))
    progress.update(1)
  else:  # Only the chosen outputs; the others stay zero and are not scored.
    progress = console.Progress(len(scored), 'attributions (all methods)',
                                unit='target')
    maps_all = None
    for target in scored:
      k = names.index(target)
      one = methods.explain_all(
          fn, variables, x, target=jnp.full((n,), k, jnp.int32), **explain_kw)
      if maps_all is None:
        maps_all = {m: jnp.zeros(a.shape[:1] + (len(names),) + a.shape[1:],
                                 a.dtype) for m, a in one.items()}
      maps_all = {m: maps_all[m].at[:, k].set(one[m]) for m in one}
      jax.block_until_ready(maps_all)
      progress.update(1)
  progress.close()
  method_names = list(maps_all)
  stacked = jnp.stack([maps_all[m] for m in method_names])  # [M, B, K, T, L]

  clock.lap('attributions')
  # Completeness with multiply-by-inputs (the captum preset's settings).
  complete = {}
  few = x[:min(n, int(ex.completeness_records))]
  for name in (('integrated_gradients', 'deeplift') if len(few) else ()):
    a = methods.attribute(name, fn, variables, few, None,
                          presets.CAPTUM[name], chunk_size=int(ex.chunk_size))
    err = np.asarray(methods.completeness_error(fn, variables, few, a))
    complete[name] = float(np.nanmedian(err))

  clock.lap('completeness')
  beats = input_key == 'beat'
  masks_all = (np.asarray(ground_truth.target_masks(
      rec['factors'], [t for t in names if t in ground_truth.TARGET_NAMES]))
               if beats else None)
  gt_index = ({t: i for i, t in enumerate(
      t for t in names if t in ground_truth.TARGET_NAMES)} if beats else {})

  clock.lap('ground-truth masks')
  rows, agreement_rows, scores_npz, curves_by_target = [], [], {}, {}
  progress = console.Progress(len(scored), 'scoring targets', unit='target')
  for target in scored:
    k = names.index(target)
    masks = (masks_all[:, gt_index[target]] if target in gt_index else None)
    scores, curves = _scores_for_target(
        evaluation, predict, x, stacked[:, :, k], k, masks,
        np.asarray(rec[MEASURES_KEY][:, k], np.float64), ex,
        jax.random.fold_in(key, k))
    curves_by_target[target] = curves
    direction = {m: MEASURES[m][0] for m in scores}
    table = evaluation.ranking_table(
        scores, method_names, direction, n_boot=int(ex.num_resamples),
        seed=int(config.get('seed', 0)) + k)
    for row in table:
      rows.append(dict(target=target, **row))
    for m, s in scores.items():
      scores_npz[f'{target}/{m}'] = np.asarray(s, np.float32)
    if GROUND_TRUTH_MEASURE in scores:
      means = {m: np.nanmean(scores[m], axis=1) for m in scores}
      tau = evaluation.agreement(means[PERTURBATION_MEASURE],
                                 means[GROUND_TRUTH_MEASURE])
      agreement_rows.append(dict(
          target=target, perturbation=PERTURBATION_MEASURE,
          ground_truth=GROUND_TRUTH_MEASURE, kendall_tau=float(tau)))
    progress.update(1)
  progress.close()

  clock.lap('perturbation and ground-truth scores')
  # Sanity check: cascading randomisation of the layers.
  rand_rows = []
  first = names.index(ex.figure_targets[0] if (
      ex.figure_targets and ex.figure_targets[0] in scored) else scored[0])
  preset = dict(presets.PRESETS[ex.preset]) if isinstance(
      ex.preset, str) else dict(ex.preset)
  xr = x[:max(1, min(n, int(ex.randomisation_records)))]
  order = _layer_order(variables['params'])
  for name in ex.randomisation_methods:
    if name not in preset:
      continue
    attribute_fn = functools.partial(
        _attribute_for, methods, name, fn, preset[name], first,
        jax.random.fold_in(key, 99), int(ex.chunk_size))
    res = evaluation.cascading_randomization(
        attribute_fn, variables, xr, order, jax.random.fold_in(key, 7))
    for step, rho in zip(res['steps'], res['spearman']):
      rand_rows.append(dict(method=name, target=names[first],
                            randomised=step, spearman=float(rho)))

  clock.lap('randomisation check')
  # Figures.
  figures = {}
  beat_mv = np.asarray(rec['beat'], np.float32)
  ecg_mv = np.asarray(rec[input_key], np.float32)
  for target in ex.figure_targets:
    if target not in scored:
      continue
    k = names.index(target)
    region = (masks_all[0, gt_index[target]] if target in gt_index
              else None)
    maps0 = {m: np.asarray(maps_all[m][0, k]) for m in method_names}
    fig = heatmaps.plot_methods(ecg_mv[0], maps0, region=region,
                                title=f'{target}: record 0, all methods')
    figures[f'methods_{target}'] = str(ecg_plot.save_figure(
        fig, os.path.join(out_dir, f'methods_{target}.png'), dpi=110))
    best = _best_method(rows, target, method_names)
    fig = heatmaps.plot_heatmap(ecg_mv[0], maps0[best],
                                title=f'{target}: {best} (best by '
                                f'{_best_measure(rows, target)})')
    figures[f'heatmap_{target}'] = str(ecg_plot.save_figure(
        fig, os.path.join(out_dir, f'heatmap_{target}.png'), dpi=90))
    curves = curves_by_target[target]
    fig = heatmaps.plot_deletion_curves(
        curves['fractions'],
        {**{m: curves['morf'][i] for i, m in enumerate(method_names)},
         'random order': curves['random']},
        title=f'{target}: deletion ({ex.fill} fill)',
        ylabel=f'|change of predicted {target}|')
    figures[f'deletion_{target}'] = str(ecg_plot.save_figure(
        fig, os.path.join(out_dir, f'deletion_{target}.png'), dpi=110))
  for measure in (PERTURBATION_MEASURE, GROUND_TRUTH_MEASURE):
    cols = [t for t in names if any(r['target'] == t and r['measure'] ==
                                    measure for r in rows)]
    if not cols:
      continue
    grid = {(r['target'], r['method']): r for r in rows
            if r['measure'] == measure}
    get = lambda field: np.array([[grid[(t, m)][field] for t in cols]
                                  for m in method_names], np.float64)
    fig = heatmaps.plot_ranking(
        method_names, cols, get('rank'), get('mean'),
        title=f'{measure}: rank per target (1 = best)')
    slug = measure.replace(' ', '_').lower()
    figures[f'ranking_{slug}'] = str(ecg_plot.save_figure(
        fig, os.path.join(out_dir, f'ranking_{slug}.png'), dpi=110))

  clock.lap('figures')
  # Blinded review page.
  items = []
  for i in range(min(n, int(ex.review_records))):
    for target in ex.review_targets:
      if target not in scored:
        continue
      k = names.index(target)
      for m in method_names:
        fig = heatmaps.plot_heatmap(ecg_mv[i], np.asarray(maps_all[m][i, k]),
                                    title=f'record {i}, target {target}')
        # 'random' is an everyday word the blinding check would refuse.
        items.append(review.ReviewItem(
            record_id=str(i), target=target,
            method=REVIEW_RANDOM if m == methods.RANDOM else m,
            png=review.figure_png(fig, dpi=60)))
  files = {}
  if items:
    page = review.write_review_page(
        os.path.join(out_dir, 'review'), items,
        seed=int(config.get('seed', 0)))
    files.update(review_page=str(page.html), review_key=str(page.key))

  clock.lap('review page')
  # Saved outputs.
  np.savez_compressed(os.path.join(out_dir, 'scores.npz'), **scores_npz)
  keep = min(n, 4)
  np.savez_compressed(
      os.path.join(out_dir, 'attributions.npz'),
      **{m: np.asarray(maps_all[m][:keep], np.float32) for m in method_names},
      ecg=ecg_mv[:keep], beat=beat_mv[:keep], targets=np.asarray(names))
  markdown = '\n\n'.join(
      f'### {target}\n\n' + evaluation.to_markdown(
          [r for r in rows if r['target'] == target])
      for target in names if any(r['target'] == target for r in rows))
  with open(os.path.join(out_dir, 'ranking.md'), 'w', encoding='utf-8') as f:
    f.write(markdown + '\n')
  files.update(scores=os.path.join(out_dir, 'scores.npz'),
               attributions=os.path.join(out_dir, 'attributions.npz'),
               ranking=os.path.join(out_dir, 'ranking.md'))

  final = train.final_metrics(directory)
  scalars, headline = {}, {}
  for k, target in enumerate(names):
    mae = final.get(f'eval/mae_{target}', final.get(f'eval/mae_dim_{k:02d}'))
    if mae is not None:
      scalars[f'mae/{target}'] = float(mae)
    for measure in MEASURES:
      best = [r for r in rows if r['target'] == target
              and r['measure'] == measure and r['best']]
      if best:
        scalars[f'{target}/best {measure}'] = float(best[0]['mean'])
  for name, err in complete.items():
    scalars[f'completeness/{name}'] = err
  for target in ex.figure_targets:
    if target in scored:
      best = _best_method(rows, target, method_names)
      measure = _best_measure(rows, target)
      value = [r for r in rows if r['target'] == target and
               r['method'] == best and r['measure'] == measure][0]['mean']
      headline[f'best for {target}'] = f'{best} ({measure} {value:.2f})'
  if agreement_rows:
    headline['perturbation vs ground truth (mean Kendall tau)'] = (
        f"{np.nanmean([r['kendall_tau'] for r in agreement_rows]):.2f}")
  return stages.summary(
      scalars=scalars, headline=headline,
      tables=dict(ranking=rows, agreement=agreement_rows,
                  randomisation=rand_rows,
                  completeness=[dict(method=k, median_relative_error=v)
                                for k, v in complete.items()]),
      figures=figures, files=files,
      details=dict(methods=method_names, targets=list(names),
                   num_records=n, preset=ex.preset, fill=ex.fill,
                   input=input_key, model_dir=directory))


class _Clock:
  """Prints how long each phase of the stage took."""

  def __init__(self):
    self._last = time.perf_counter()

  def lap(self, what: str) -> None:
    now = time.perf_counter()
    console.info(f'  {what}: {now - self._last:.1f} s')
    self._last = now


def _attribute_for(methods, name, fn, settings, target, key, chunk_size,
                   params, x):
  return methods.attribute(name, fn, params, x, target, settings, key=key,
                           chunk_size=chunk_size)


def _best_measure(rows, target) -> str:
  """Ground-truth mass accuracy where scored, else the deletion AOPC."""
  if any(r['target'] == target and r['measure'] == GROUND_TRUTH_MEASURE
         for r in rows):
    return GROUND_TRUTH_MEASURE
  return PERTURBATION_MEASURE


def _best_method(rows, target, method_names) -> str:
  measure = _best_measure(rows, target)
  scored = {r['method']: r['mean'] for r in rows
            if r['target'] == target and r['measure'] == measure}
  values = np.array([scored.get(m, np.nan) for m in method_names])
  return method_names[int(ranking.argmax(values))]
