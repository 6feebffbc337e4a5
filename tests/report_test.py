"""Unit tests of the report renderer on hand-written summaries (seconds).

A fake workdir holds a config.json, metrics and the summaries of a few
stages, with hostile text (a `<script>` label, quotes in column names, a
stage named with markup) that must come out escaped. The pipeline test
(tests/stages/pipeline_test.py) renders a real tiny run.
"""

import csv
import io
import json
import os
import re
import sys

import matplotlib

matplotlib.use('Agg')

# pylint: disable=g-import-not-at-top,wrong-import-position
from matplotlib import figure as mfigure
import ml_collections
import pytest

from factorecg_jax import report
from factorecg_jax import stages

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import browser  # pylint: disable=import-error
# pylint: enable=g-import-not-at-top,wrong-import-position

EVIL = '<script>alert(1)</script>'
QUOTED = 'rho "Spearman" \'abs\''
EVIL_STAGE = 'my<b>stage</b>'
EVIL_FIGURE = 'fig"><img src=x onerror=alert(2)>'


def _png(path, width=2.0):
  fig = mfigure.Figure(figsize=(width, 1.0), dpi=40)
  fig.add_subplot().plot([0, 1, 0.5])
  buf = io.BytesIO()
  fig.savefig(buf, format='png')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(buf.getvalue())
  return path


def _save(workdir, folder, name, **summary):
  record = stages.summary(**summary)
  record.update(stage=name, fingerprint='f', checkpoint_step=4, seconds=1.5,
                created='2026-12-01T20:00:00+00:00')
  os.makedirs(os.path.join(workdir, folder), exist_ok=True)
  with open(os.path.join(workdir, folder, 'summary.json'), 'w') as f:
    json.dump(record, f)


def _run_config():
  return dict(
      seed=0, task='vae', model_name='vae', data=dict(source='simulated'),
      downstream=dict(num_test=10),
      blackbox=dict(targets=('reduced_ef',), inputs=('beat',)),
      explain=dict(num_records=4), analysis=dict(kl_threshold=0.01),
      model=dict(latents=4, note=EVIL))


@pytest.fixture
def workdir(tmp_path):
  """A run: trained; encode, evaluate, downstream, explain and a user stage
  ran; traverse and blackbox did not."""
  stages.discover()
  w = str(tmp_path / 'run')
  os.makedirs(os.path.join(w, 'checkpoints', '4'))
  with open(os.path.join(w, 'config.json'), 'w') as f:
    json.dump(dict(_run_config(), run_info=dict(
        code_version='abc123', command=['main.py', f'--note={EVIL}'],
        seeds=dict(seed=0), versions=dict(jax='0.0-test'),
        devices=dict(platform='cpu', device_count=8))), f)
  with open(os.path.join(w, 'metrics.jsonl'), 'w') as f:
    for step in (2, 4):
      f.write(json.dumps({'step': step, 'train/loss': 10.0 / step}) + '\n')
    f.write(json.dumps({'step': 4, 'eval/loss': 3.0, 'eval/r2': 0.875,
                        'eval/kl_dim_00': 0.5}) + '\n')
  _save(w, 'factors', 'encode',
        scalars=dict(num_active=3, latents=4, kl_threshold=0.01),
        headline={'active factors': '3 of 4'},
        tables=dict(kl_per_dim=[dict(dim=d, kl=0.1 * d) for d in range(4)]),
        figures=dict(kl_per_dim=_png(os.path.join(w, 'factors', 'kl.png'))))
  _save(w, 'disentanglement', 'evaluate',
        scalars=dict(mig=0.25), headline={'MIG': 0.25},
        tables=dict(factor_names=[
            dict(code=0, column='qrs_dur', label='QRS duration', rho=0.9),
            dict(code=1, column='hr', label=EVIL, rho=-0.7),
            dict(code=2, column='r_amp/V5', label='R V5', rho=0.5)]),
        figures=dict(spearman='disentanglement/absent.png'))
  _save(w, 'downstream', 'downstream', tables=dict(comparison=[
      dict(model='factors: logistic', task='reduced EF', metric='AUROC',
           value=0.81, low=0.78, high=0.84, n=100),
      dict(model='factors: XGBoost', task='reduced EF', metric='AUROC',
           value=0.79, low=0.75, high=0.83, n=100),
      dict(model='ResNet (beat)', task='reduced EF', metric='AUROC',
           value=0.83, low=0.80, high=0.86, n=100),
      dict(model='oracle (true factors): logistic', task='reduced EF',
           metric='AUROC', value=0.9, low=0.88, high=0.92, n=100),
      dict(model='factors: logistic \u00b7 external (realistic)',
           task='reduced EF', metric='AUROC', value=0.7, low=None,
           high=None, n=100)], differences=[
               dict(model='factors: logistic', reference='ResNet (beat)',
                    task='reduced EF', metric='AUROC', difference=-0.02,
                    low=-0.035, high=-0.005, n=100),
               dict(model='factors: logistic',
                    reference='oracle (true factors): logistic',
                    task='reduced EF', metric='AUROC', difference=-0.09,
                    low=-0.11, high=-0.07, n=100)]))
  ranking = []
  for target in ('qrs_ms', 'pr_ms'):
    for measure in ('AOPC', 'mass accuracy'):
      for k, method in enumerate(('saliency', 'gradcam')):
        ranking.append(dict(target=target, measure=measure, method=method,
                            mean=0.5 + 0.1 * k, low=0.4, high=0.7,
                            rank=2 - k, best=k == 1))
  _save(w, 'explain', 'explain', tables=dict(
      ranking=ranking, agreement=[dict(target='qrs_ms', kendall_tau=1.0)]))
  _save(w, 'mine', EVIL_STAGE,
        headline={EVIL: 'value " quoted'},
        tables={'long': [{QUOTED: i, 'label': EVIL} for i in range(100)]},
        figures={EVIL_FIGURE: _png(os.path.join(w, 'mine', 'a.png')),
                 'guided': _png(os.path.join(w, 'mine', 'b.png'))},
        files={'evil': 'javascript:alert(3)'},
        details=dict(figure_guides={'gui*': 'Read me like this.'}))
  return w


def _html(path):
  with open(path, encoding='utf-8') as f:
    return f.read()


def test_page_escapes_every_text_from_data(workdir):
  page = report.render_run(workdir)
  assert page == os.path.join(workdir, 'report', 'index.html')
  text = _html(page)
  # No script at all: neither injected nor our own.
  assert '<script' not in text.lower()
  assert EVIL not in text and '<b>stage</b>' not in text
  assert html_escaped(EVIL) in text
  assert html_escaped(QUOTED) in text  # a column name with quotes
  assert html_escaped(EVIL_STAGE) in text
  assert html_escaped(EVIL_FIGURE) in text and 'onerror=alert(2)>' not in text
  assert 'href="javascript:' not in text
  assert html_escaped(f'--note={EVIL}') in text  # the command, from run_info
  # The page loads nothing: a CSP allowing only inline data.
  assert html_escaped("default-src 'none'; img-src data:;") in text
  assert not re.search(r'(src|href)="(https?:)?//', text)


def html_escaped(text):
  return (text.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')
          .replace('"', '&quot;').replace("'", '&#x27;'))


def test_first_screen_numbers(workdir):
  report.render_run(workdir)
  with open(os.path.join(workdir, 'report', 'headline.json')) as f:
    headline = json.load(f)
  assert headline['reconstruction'] == dict(
      eval_r2=0.875, steps=4, active_factors=3, latents=4, kl_threshold=0.01)
  factors = headline['factors']
  assert factors['named'] == 3 and factors['distinct_names'] == 3
  assert factors['true_factors_found'] == ['hr', 'qrs_dur']
  assert factors['num_true_factors'] == 14
  assert len(factors['true_factors_missing']) == 12
  (internal, external) = headline['downstream']
  assert internal['test set'] == 'internal'
  assert [e['model'] for e in internal['factors']] == ['logistic', 'XGBoost']
  assert internal['resnet'][0]['value'] == 0.83
  assert internal['oracle'][0]['model'] == 'logistic'
  assert external['test set'] == 'external (realistic)'
  assert external['resnet'] == []
  # Paired differences beside the models they compare.
  assert [(e['model'], e['value']) for e in internal['vs_resnet']] == [
      ('logistic \u2212 ResNet (beat)', -0.02)]
  assert [(e['model'], e['value']) for e in internal['vs_oracle']] == [
      ('logistic', -0.09)]
  assert external['vs_resnet'] == [] and external['vs_oracle'] == []
  best = {b['target']: b for b in headline['attribution']}
  assert best['qrs_ms']['mass accuracy'][0]['method'] == 'gradcam'
  assert best['qrs_ms']['kendall_tau'] == 1.0
  assert 'kendall_tau' not in best['pr_ms']
  text = _html(os.path.join(workdir, 'report', 'index.html'))
  assert 'R\u00b2 0.875' in text
  assert '2 of 14' in text
  assert '0.810 (0.780\u20130.840)' in text  # CI of the factor model
  assert '0.700' in text  # a value without CI
  assert '-0.020 (-0.035 to -0.005)' in text  # a signed paired difference


def test_missing_stages_are_absent_and_named(workdir):
  report.render_run(workdir)
  with open(os.path.join(workdir, 'report', 'headline.json')) as f:
    headline = json.load(f)
  # traverse and blackbox apply to this config and have not run; simulate
  # does not apply (no simulate block), and the report never lists itself.
  assert headline['stages_not_run'] == ['traverse', 'blackbox']
  assert headline['stages_run'] == ['train', 'encode', 'evaluate',
                                    'downstream', 'explain', EVIL_STAGE]
  text = _html(os.path.join(workdir, 'report', 'index.html'))
  assert 'id="stage-traverse"' not in text
  assert 'id="stage-simulate"' not in text
  assert 'Not run yet: traverse, blackbox' in text
  # Sections in stage order, training after the stages that need nothing,
  # an unknown stage last.
  ids = re.findall(r'<section id="stage-([^"]+)"', text)
  assert ids == ['train', 'encode', 'evaluate', 'downstream', 'explain',
                 'my_b_stage_b']
  # The evaluate stage's figure file is missing: said, not embedded.
  assert 'Figure file missing: disentanglement/absent.png' in text


def test_empty_workdir(tmp_path):
  text = _html(report.render_run(str(tmp_path)))
  assert 'Not run yet: train' in text
  assert 'Not trained yet.' in text
  assert 'No config.json' in text
  assert '<img' not in text


def test_figure_guides_and_fallback(workdir):
  assert report.figure_guide('traverse', 'factor_07') == report.FIGURE_GUIDES[
      'traverse/factor_*']
  assert report.figure_guide('somestage', 'plot') == (
      report.GENERIC_GUIDE.format(stage='somestage', figure='plot'))
  summary = dict(details=dict(figure_guides={'factor_07': 'Mine.'}))
  assert report.figure_guide('traverse', 'factor_07', summary) == 'Mine.'
  assert report.figure_guide('traverse', 'factor_08', summary) == (
      report.FIGURE_GUIDES['traverse/factor_*'])
  text = _html(report.render_run(workdir))
  assert html_escaped(report.FIGURE_GUIDES['encode/kl_per_dim']) in text
  assert 'Read me like this.' in text  # the stage's own override
  assert html_escaped(report.GENERIC_GUIDE.format(
      stage=EVIL_STAGE, figure=EVIL_FIGURE)) in text
  assert html_escaped(report.FIGURE_GUIDES['train/curves']) in text
  # kl_per_dim, two of the user stage, the training curves; one missing.
  assert text.count('src="data:image/png;base64,') == 4


def test_big_tables_are_cut_and_written_in_full(workdir):
  report.render_run(workdir)
  out = os.path.join(workdir, 'report')
  text = _html(os.path.join(out, 'index.html'))
  section = text[text.index('id="stage-my_b_stage_b"'):]
  table = section[section.index('<table>'):section.index('</table>')]
  assert table.count('<tr>') == report.MAX_ROWS + 1  # with the header
  csv_name = 'tables/my_b_stage_b-long.csv'
  assert (f'Showing the first {report.MAX_ROWS} of 100 rows; all rows: '
          f'<a href="tables.md">tables.md</a>') in section
  assert f'<a href="{csv_name}">{csv_name}</a>' in section
  with open(os.path.join(out, csv_name), newline='') as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 100 and rows[99][QUOTED] == '99'
  assert rows[0]['label'] == EVIL  # the CSV keeps the raw text
  with open(os.path.join(out, 'tables.md')) as f:
    markdown = f.read()
  assert '### long' in markdown and '| 99 |' in markdown
  assert '## evaluate' in markdown and '### factor_names' in markdown
  assert '### downstream comparison' in markdown  # the first screen's


def test_markdown_and_formatting():
  rows = [dict(a=1, b=0.123456, c=None, d='x|y', e=True), dict(a=2)]
  assert report.markdown_table(rows).splitlines() == [
      '| a | b | c | d | e |', '|---:|---:|---:|---|---|',
      '| 1 | 0.1235 | n/a | x\\|y | yes |', '| 2 | n/a | n/a | n/a | n/a |']
  assert report.fmt(float('nan')) == 'n/a'
  assert report.fmt_ci(0.5, 0.4, 0.6) == '0.500 (0.400\u20130.600)'
  assert report.fmt_ci(None, 0.4, 0.6) == 'n/a'


def test_report_stage_never_lists_itself(workdir):
  config = ml_collections.ConfigDict(_run_config())
  assert stages.STAGES['report'].always
  assert stages.ordered()[-1].name == 'report'
  for _ in range(2):  # the second run finds the first's summary
    record = stages.run_stage('report', config, workdir)
  assert record['files'] == dict(html='report/index.html',
                                 headline='report/headline.json',
                                 tables='report/tables.md')
  assert record['scalars']['figures_embedded'] == 4
  text = _html(os.path.join(workdir, 'report', 'index.html'))
  assert 'id="stage-report"' not in text
  assert '>report</a>' not in text  # not in the navigation either


def _sweep(tmp_path):
  sweep_dir = str(tmp_path / 'sweep')
  _png(os.path.join(sweep_dir, 'results', 'tradeoff.png'), width=3.0)
  summary = stages.summary(
      headline={'best beta': 4.0},
      tables=dict(
          by_point=[dict(beta=b, mig=0.1 * b, **{'eval R^2 "mean"': 0.9})
                    for b in (1.0, 4.0)],
          trials=[dict(beta=b, seed=s, workdir=f'trials/{EVIL}')
                  for b in (1.0, 4.0) for s in range(30)]),
      figures=dict(tradeoff__mig__eval_r2='results/tradeoff.png'),
      files=dict(trials='results/trials.csv'))
  summary['details'] = dict(sweep=f'beta {EVIL}')
  summary.update(kind='sweep', stage='sweep')
  with open(os.path.join(sweep_dir, 'results', 'summary.json'), 'w') as f:
    json.dump(summary, f)
  return sweep_dir


def test_render_sweep(tmp_path):
  sweep_dir = _sweep(tmp_path)
  page = report.render_sweep(sweep_dir)
  assert page == os.path.join(sweep_dir, 'report', 'index.html')
  text = _html(page)
  assert '<script' not in text.lower() and EVIL not in text
  assert html_escaped(f'FactorECG sweep: beta {EVIL}') in text
  assert 'Trade-off: one row per swept setting' in text
  assert html_escaped('eval R^2 "mean"') in text
  assert text.count('src="data:image/png;base64,') == 1
  assert html_escaped(report.FIGURE_GUIDES['sweep/tradeoff__*']) in text
  assert report.figure_guide('sweep', 'other') == report.FIGURE_GUIDES[
      'sweep/*']
  # The trade-off table comes first, its plot right below it.
  assert (text.index('Trade-off') < text.index('id="plots"')
          < text.index('Every trial'))
  assert 'Showing the first 40 of 60 rows' in text
  assert os.path.exists(os.path.join(sweep_dir, 'report', 'tables',
                                     'sweep-trials.csv'))


def test_render_sweep_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='No sweep summary'):
    report.render_sweep(str(tmp_path))
  os.makedirs(tmp_path / 'results')
  (tmp_path / 'results' / 'summary.json').write_text('{"stage": "x"}')
  with pytest.raises(ValueError, match='not a sweep summary'):
    report.render_sweep(str(tmp_path))


def test_hostile_page_in_headless_chromium(workdir, tmp_path):
  page = report.render_run(workdir)
  sweep_page = report.render_sweep(_sweep(tmp_path))
  driver = browser.require_browser()
  try:
    # pylint: disable-next=g-import-not-at-top
    from selenium.common import exceptions
    driver.set_page_load_timeout(20)
    for path, images in ((page, 4), (sweep_page, 1)):
      driver.get('file://' + path)
      assert browser.console_errors(driver) == []
      widths = driver.execute_script(
          'return Array.from(document.images).map(i => i.naturalWidth);')
      assert len(widths) == images and all(w > 0 for w in widths), widths
      with pytest.raises(exceptions.NoAlertPresentException):
        driver.switch_to.alert  # pylint: disable=pointless-statement
    driver.get('file://' + page)
    shown = driver.execute_script('return document.body.innerText;')
    assert EVIL in shown and QUOTED in shown
  finally:
    driver.quit()
