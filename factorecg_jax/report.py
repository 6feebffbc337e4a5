"""The end-to-end report of a run (and of a sweep): one self-contained page.

`render_run(workdir)` reads what the run wrote (config.json, metrics.jsonl and
every stage's `summary.json`, factorecg_jax/stages/) and writes
`<workdir>/report/`:

* `index.html`: one page that opens offline from a file. Figures are
  embedded as base64 `data:` URIs, the CSS is inline, there is no script,
  and a Content-Security-Policy forbids every network load. It starts with
  the numbers a cardiologist and an ML engineer both look for (reconstruction
  R^2 and active factors; the factors found and named against the simulator's
  14 true factors; factor models vs the black-box ResNet vs the oracle on
  true factors, with 95 % CIs; the best attribution method per target), then
  one section per stage that ran, in stage order (a stage this module does
  not know is rendered from its summary alone), then reproducibility
  (`config.json`'s run_info and the resolved config). Stages that have not
  run are listed, not rendered: a half-run workdir gives a half report.
* `headline.json`: the first screen's numbers (and every stage's headline).
* `tables.md`: every table (first screen and stages), all rows, as markdown;
  `tables/<stage>-<table>.csv` the same as CSV. The page shows at most
  `MAX_ROWS` rows of a table and names these files for the rest.

Every figure gets a one-sentence reading guide: `details.figure_guides` of
its stage's summary (figure name or fnmatch pattern -> sentence) if given,
else the first `FIGURE_GUIDES` pattern matching `<stage>/<figure>`, else
`GENERIC_GUIDE`.

`render_sweep(sweep_dir)` writes `<sweep_dir>/report/index.html` (and
tables.md) from a sweep's `results/summary.json` (the shared summary shape
with "kind": "sweep", tables 'by_point' and 'trials', figure paths relative
to the sweep directory): the trade-off table, the trials and the plots.

Every text that comes from data (ids, labels, column and stage names, table
cells, paths, config values) goes through `html.escape`.
"""

from __future__ import annotations

import base64
import csv
import datetime
import fnmatch
import hashlib
import html
import json
import math
import os
import re
import shlex
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

from factorecg_jax import stages

REPORT_DIR = 'report'
PAGE_NAME = 'index.html'
HEADLINE_NAME = 'headline.json'
TABLES_NAME = 'tables.md'
CSV_DIR = 'tables'
TRAINING_FIGURE = 'training_curves.png'
REPORT_STAGE = 'report'  # the stage that renders this page (never shown)
MAX_ROWS = 40  # table rows shown on the page; the files have all of them
MAX_EMBED_BYTES = 16 * 2**20  # larger figures are linked, not embedded
MAX_DETAILS_CHARS = 20_000  # a stage's `details` JSON shown on the page
# Where the training section sits among the stages (by `Stage.order`:
# after the simulated-data summary, before the factor stages).
TRAINING_ORDER = 10
# Stages found on disk but not registered in this process: after the rest.
UNKNOWN_ORDER = 900
SWEEP_KIND = 'sweep'

# One sentence per figure on how to read it: fnmatch patterns of
# '<stage>/<figure name>', first match wins ('sweep/...' for sweep figures,
# 'train/...' for the report's own training curves).
FIGURE_GUIDES: dict[str, str] = {
    'simulate/beat_*': (
        'One simulated record with this finding, 12 leads: the clean beat '
        '(black) under the noisy one the model sees (blue); the title gives '
        'its rate and intervals.'),
    'simulate/strip': (
        'A 10-s rhythm strip of the normal example: rate and rhythm of the '
        'simulated beats, with their beat-to-beat variability.'),
    'simulate/factors': (
        'Histograms of the 14 ground-truth factors over the simulated '
        'records: the range of physiology the model can learn from.'),
    'simulate/labels': (
        'How often each of the 16 labels occurs: rare labels give wide '
        'confidence intervals downstream.'),
    'simulate/survival': (
        "Kaplan-Meier survival by quartile of the simulator's risk score: "
        'well separated curves mean mortality is predictable from the ECG.'),
    'encode/kl_per_dim': (
        'KL divergence to the prior per latent dimension (log scale): bars '
        'above the dashed threshold are the active factors, the rest carry '
        'no information.'),
    'traverse/factor_*': (
        'The population-mean ECG decoded with this one factor moved from '
        '-3 SD (blue) to +3 SD (red): the waves that change are what the '
        'factor encodes.'),
    'traverse/all_active_factors': (
        'Every active factor (rows) moved over the same range on a few '
        'leads: compare which wave each factor changes and whether two '
        'factors change the same thing.'),
    'traverse/record_*': (
        "The same traversals started from one record's own factors instead "
        "of the population mean: each factor's effect on an individual ECG."),
    'evaluate/spearman': (
        'Spearman correlation of each active factor (rows) with each true '
        'factor and ECG measurement (columns): one strong cell per row is a '
        'factor with one clear meaning.'),
    'evaluate/importance': (
        'DCI importance of each active factor for predicting each true '
        'factor: a disentangled model has one dominant cell per column.'),
    'evaluate/mutual_info': (
        'Mutual information between active and true factors (what MIG '
        'scores): a large gap between the top two cells of a column means '
        'one factor captured it alone.'),
    'evaluate/encoded': (
        'How much of each true factor the active factors carry at all '
        '(held-out R\u00b2, linear and boosted), however entangled: a true '
        'factor near 0 is lost to every downstream model; boosted well '
        'above linear means it is there, but non-linearly.'),
    'downstream/comparison': (
        'Test AUROC / C-index with 95 % bootstrap CIs per task and model. '
        'Whether the factor model is detectably worse than the ResNet is '
        'the paired-differences table: both scored on the same records and '
        'resamples, its CI is narrower than these two intervals suggest.'),
    'downstream/km_by_quartile': (
        "Kaplan-Meier survival of the test records by quartile of the Cox "
        "model's risk on the factors: separated curves mean the factors "
        'stratify mortality.'),
    'downstream/calibration': (
        'Predicted against observed 1-year risk per risk bin: points on the '
        'dotted diagonal mean the predicted risks can be taken at face '
        'value.'),
    'downstream/counterfactual': (
        "The highest-risk test record's decoded ECG (black) and the same with "
        'its most important factor set to the population mean (blue), with '
        'both predicted risks: the waveform change behind the risk.'),
    'explain/methods_*': (
        "One record's ECG with every attribution method's relevance (rows; "
        'grey band in the profile: the region that truly determines the '
        'target): good methods concentrate inside the band.'),
    'explain/heatmap_*': (
        "The best-scoring method's relevance drawn over the 12-lead ECG: "
        'shaded samples are the ones that drove the predicted value.'),
    'explain/deletion_*': (
        'Change of the prediction as samples are deleted, most relevant '
        'first: a method whose curve rises faster than random order found '
        'what the model uses.'),
    'explain/ranking_*': (
        'Mean score of each method (rows) per target (columns), brighter is '
        'better: a method bright in every column is the safe choice.'),
    'train/curves': (
        'Training (line) and held-out (dots) loss per step, with the '
        'held-out score: a falling, flattening curve means training '
        'converged; a rising eval loss means overfitting.'),
    'sweep/tradeoff__*': (
        'One point per swept setting (mean and SD over seeds) on two '
        'objectives, arrows marking the better direction: the points no '
        'other point beats on both are the trade-off to choose from.'),
    'sweep/*__vs__*': (
        'A metric (mean and SD over seeds) against one swept setting: where '
        'the curve flattens, more of that setting stops paying.'),
    'sweep/optuna_pareto_front': (
        "Every trial on the objectives, Optuna's Pareto front highlighted: "
        'the trials no other trial beats on all objectives at once.'),
    'sweep/optuna_importances__*': (
        "How much of the objective's variation each swept setting explains "
        "(Optuna's importance estimate): tune the top ones first."),
    'sweep/optuna_history__*': (
        'The objective of every trial in order, with the best so far: a '
        'flat best-so-far line means the search has stopped improving.'),
    'sweep/*': (
        'One point per swept setting: read how the metric moves along the '
        'swept axis and where one gain starts to cost another.'),
}
GENERIC_GUIDE = ('A figure of the {stage} stage ({figure}); the tables of '
                 'its section give the numbers behind it.')

_CSS = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, 'Segoe UI', Roboto,
  sans-serif; margin: 0; color: #1d232a; background: #fafbfc; }
header, main, footer { max-width: 1180px; margin: 0 auto; padding: 0 20px; }
header { padding-top: 18px; }
h1 { font-size: 1.6em; margin: 0.3em 0; }
h2 { font-size: 1.3em; border-bottom: 2px solid #d6dde5; padding-bottom: 4px;
  margin-top: 2em; }
h3 { font-size: 1.08em; margin: 1.3em 0 0.4em; }
nav ul { list-style: none; padding: 0; display: flex; flex-wrap: wrap;
  gap: 6px 14px; }
nav a, a { color: #0b5cad; }
.muted, .desc { color: #5b6670; }
.note { color: #7a4b00; background: #fff6e0; border-left: 3px solid #e0a800;
  padding: 4px 10px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit,
  minmax(300px, 1fr)); gap: 14px; }
.card { background: #fff; border: 1px solid #d6dde5; border-radius: 6px;
  padding: 10px 14px; }
.card h3 { margin-top: 0.2em; }
.big { font-size: 1.7em; font-weight: 600; }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px;
  margin: 0.4em 0; }
dl.kv dt { color: #5b6670; }
dl.kv dd { margin: 0; font-variant-numeric: tabular-nums; }
.tablewrap { overflow-x: auto; }
table { border-collapse: collapse; margin: 0.3em 0 0.8em; background: #fff;
  font-size: 0.92em; }
th, td { border: 1px solid #d6dde5; padding: 3px 8px; text-align: left;
  vertical-align: top; }
th { background: #eef2f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td .sub { display: block; color: #5b6670; font-size: 0.9em; }
.figs { display: grid; grid-template-columns: repeat(auto-fill,
  minmax(520px, 1fr)); gap: 16px; }
figure { margin: 0; background: #fff; border: 1px solid #d6dde5;
  border-radius: 6px; padding: 8px; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { font-size: 0.92em; margin-top: 6px; }
figcaption .name { font-weight: 600; }
.missing { color: #8a1c1c; }
pre { background: #f1f4f7; padding: 8px; overflow-x: auto; font-size: 0.85em;
  white-space: pre-wrap; word-break: break-word; }
details { margin: 0.5em 0; }
summary { cursor: pointer; color: #0b5cad; }
ul.files { padding-left: 1.2em; }
code { font-size: 0.92em; }
footer { padding-bottom: 30px; color: #5b6670; font-size: 0.9em; }
"""


# ------------------------------------------------------------ formatting ---


def _e(value: Any) -> str:
  """HTML-escaped text of any value (quotes too, for attributes)."""
  return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
  """A table cell's or headline value's display text.

  Args:
    value: anything JSON-able.
    digits: significant digits of floats.

  Returns:
    'n/a' for None and NaN, 'yes'/'no' for booleans, floats to `digits`
    significant digits, lists and dicts as compact JSON, else `str`.
  """
  if value is None:
    return 'n/a'
  if isinstance(value, bool):
    return 'yes' if value else 'no'
  if isinstance(value, int):
    return str(value)
  if isinstance(value, float):
    if math.isnan(value):
      return 'n/a'
    if math.isinf(value):
      return str(value)
    return f'{value:.{digits}g}'
  if isinstance(value, (list, tuple, dict)):
    return json.dumps(value, ensure_ascii=False, default=str)
  return str(value)


def _number(value: Any) -> float | None:
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return None
  return float(value) if math.isfinite(value) else None


def fmt_ci(value: Any, low: Any, high: Any, digits: int = 3) -> str:
  """'0.812 (0.780-0.845)', the value alone without bounds, 'n/a' if none."""
  value, low, high = _number(value), _number(low), _number(high)
  if value is None:
    return 'n/a'
  if low is None or high is None:
    return f'{value:.{digits}f}'
  return f'{value:.{digits}f} ({low:.{digits}f}\u2013{high:.{digits}f})'


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  """Keys of all rows, in order of first appearance."""
  out: dict[str, None] = {}
  for row in rows:
    for key in row:
      out.setdefault(str(key), None)
  return list(out)


def _md_cell(text: Any) -> str:
  return str(text).replace('\\', '\\\\').replace('|', '\\|').replace(
      '\r', ' ').replace('\n', ' ')


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """Every row of a table as markdown (cells as `fmt` shows them)."""
  if not rows:
    return '(no rows)\n'
  columns = _columns(rows)
  numeric = [all(_number(r.get(c)) is not None or r.get(c) is None
                 for r in rows) for c in columns]
  lines = ['| ' + ' | '.join(_md_cell(c) for c in columns) + ' |',
           '|' + ''.join('---:|' if n else '---|' for n in numeric)]
  for row in rows:
    lines.append('| ' + ' | '.join(_md_cell(fmt(row.get(c)))
                                   for c in columns) + ' |')
  return '\n'.join(lines) + '\n'


def _csv_value(value: Any) -> Any:
  if value is None:
    return ''
  if isinstance(value, (list, tuple, dict)):
    return json.dumps(value, ensure_ascii=False, default=str)
  return value


def _write_csv(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
  columns = _columns(rows)
  with open(path, 'w', encoding='utf-8', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    for row in rows:
      writer.writerow([_csv_value(row.get(c)) for c in columns])


def _slug(text: str) -> str:
  return re.sub(r'[^A-Za-z0-9_.-]+', '_', str(text)).strip('_.') or 'x'


# ------------------------------------------------------------- the page ---


def _csp_hash(text: str) -> str:
  digest = hashlib.sha256(text.encode('utf-8')).digest()
  return "'sha256-" + base64.b64encode(digest).decode('ascii') + "'"


def _html_page(title: str, header: str, body: str, footer: str) -> str:
  # No script at all, nothing from the network: only data: images and the
  # hash-pinned inline style may load.
  csp = ("default-src 'none'; img-src data:; "
         f"style-src {_csp_hash(_CSS)}; base-uri 'none'; form-action 'none'")
  return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_e(csp)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="factorecg_jax.report">
<title>{_e(title)}</title>
<link rel="icon" href="data:,">
<style>{_CSS}</style>
</head>
<body>
<header>
{header}
</header>
<main>
{body}
</main>
<footer>
{footer}
</footer>
</body>
</html>
"""


def _kv(items: Mapping[str, Any] | Sequence[tuple[str, Any]]) -> str:
  """A definition list of (label, value): both escaped."""
  pairs = items.items() if isinstance(items, Mapping) else items
  cells = ''.join(f'<dt>{_e(k)}</dt><dd>{_e(fmt(v))}</dd>' for k, v in pairs)
  return f'<dl class="kv">{cells}</dl>' if cells else ''


class _Tables:
  """Collects every table shown: for tables.md and the CSV files."""

  def __init__(self, out_dir: str):
    self.out_dir = out_dir
    self.sections: list[tuple[str, list[tuple[str, list[dict]]]]] = []
    self._csv_names: set[str] = set()

  def section(self, title: str) -> None:
    self.sections.append((title, []))

  def add(self, section: str, name: str, rows: Sequence[Mapping[str, Any]]
          ) -> str:
    """Records a table; returns its CSV file (relative to the report)."""
    if not self.sections or self.sections[-1][0] != section:
      self.section(section)
    self.sections[-1][1].append((name, [dict(r) for r in rows]))
    base = f'{_slug(section)}-{_slug(name)}'
    csv_name, k = f'{base}.csv', 1
    while csv_name in self._csv_names:
      k += 1
      csv_name = f'{base}-{k}.csv'
    self._csv_names.add(csv_name)
    os.makedirs(os.path.join(self.out_dir, CSV_DIR), exist_ok=True)
    _write_csv(os.path.join(self.out_dir, CSV_DIR, csv_name), rows)
    return f'{CSV_DIR}/{csv_name}'

  def markdown(self, title: str) -> str:
    lines = [f'# {_md_cell(title)}', '',
             'Every table of the report with all its rows (the page shows '
             f'at most {MAX_ROWS}); `{CSV_DIR}/` has them as CSV.', '']
    for section, tables in self.sections:
      lines += [f'## {_md_cell(section)}', '']
      for name, rows in tables:
        lines += [f'### {_md_cell(name)}', '', markdown_table(rows)]
    return '\n'.join(lines)


class _Context:
  """What every section of one page writes to."""

  def __init__(self, base: str, out_dir: str):
    self.base = base  # summary paths are relative to this directory
    self.out_dir = out_dir
    self.tables = _Tables(out_dir)
    self.counts: dict[str, int] = {}  # figures embedded / missing / linked
    self.anchors: set[str] = set()


class _Html(str):
  """Markup already escaped (a cell built by this module)."""


def _cell_html(value: Any) -> str:
  if isinstance(value, _Html):
    return f'<td>{value}</td>'
  cls = ' class="num"' if _number(value) is not None else ''
  return f'<td{cls}>{_e(fmt(value))}</td>'


def _table_html(rows: Sequence[Mapping[str, Any]], *, caption: str = '',
                csv_name: str = '', section: str = '',
                max_rows: int = MAX_ROWS) -> str:
  """An HTML table of at most `max_rows` rows, with a note past that.

  Args:
    rows: row dicts; keys and cells are escaped (except `_Html` cells).
    caption: shown above the table.
    csv_name: the CSV file with every row (relative to the page).
    section: the table's section in tables.md (named in the note).
    max_rows: rows shown.
  """
  head = f'<h3>{_e(caption)}</h3>' if caption else ''
  if not rows:
    return head + '<p class="muted">(no rows)</p>'
  columns = _columns(rows)
  ths = ''.join(f'<th scope="col">{_e(c)}</th>' for c in columns)
  shown = rows[:max_rows]
  trs = '\n'.join('<tr>' + ''.join(_cell_html(r.get(c)) for c in columns)
                  + '</tr>' for r in shown)
  note = ''
  if len(rows) > len(shown):
    where = f'<a href="{TABLES_NAME}">{TABLES_NAME}</a>'
    if section:
      where += f' (section {_e(section)})'
    if csv_name:
      where += (f' and <a href="{_e(urllib.parse.quote(csv_name))}">'
                f'{_e(csv_name)}</a>')
    note = (f'<p class="note">Showing the first {len(shown)} of {len(rows)} '
            f'rows; all rows: {where}.</p>')
  return (f'{head}{note}<div class="tablewrap"><table><thead><tr>{ths}</tr>'
          f'</thead><tbody>\n{trs}\n</tbody></table></div>')


_MIME = {'.png': 'image/png', '.jpg': 'image/jpeg', '.jpeg': 'image/jpeg',
         '.gif': 'image/gif', '.svg': 'image/svg+xml', '.webp': 'image/webp'}


def _href(path: str, base: str, report_dir: str) -> str:
  """A link from the report page to `path` (relative to `base`)."""
  full = path if os.path.isabs(path) else os.path.join(base, path)
  rel = os.path.relpath(os.path.abspath(full), os.path.abspath(report_dir))
  return urllib.parse.quote(rel.replace(os.sep, '/'), safe='/')


def figure_guide(stage: str, figure: str,
                 summary: Mapping[str, Any] | None = None) -> str:
  """The one-sentence reading guide of a figure (see the module docstring).

  Args:
    stage: the stage name ('sweep' for a sweep's figures).
    figure: the figure's name in the summary.
    summary: the stage summary; its `details.figure_guides` (figure name or
      fnmatch pattern -> sentence) overrides the central `FIGURE_GUIDES`.

  Returns:
    The sentence (plain text, not yet escaped).
  """
  details = (summary or {}).get('details') or {}
  overrides = details.get('figure_guides') if isinstance(
      details, Mapping) else None
  if isinstance(overrides, Mapping):
    if figure in overrides:
      return str(overrides[figure])
    for pattern, text in overrides.items():
      if fnmatch.fnmatchcase(figure, str(pattern)):
        return str(text)
  key = f'{stage}/{figure}'
  for pattern, text in FIGURE_GUIDES.items():
    if fnmatch.fnmatchcase(key, pattern):
      return text
  return GENERIC_GUIDE.format(stage=stage, figure=figure)


def _figure_html(stage: str, name: str, path: str, base: str,
                 report_dir: str, summary: Mapping[str, Any] | None,
                 counts: dict[str, int]) -> str:
  """One figure, embedded, with its name, reading guide and file."""
  guide = figure_guide(stage, name, summary)
  full = path if os.path.isabs(path) else os.path.join(base, path)
  ext = os.path.splitext(str(path))[1].lower()
  caption = (f'<figcaption><span class="name">{_e(name)}</span>: '
             f'{_e(guide)} <span class="muted">(<a href="'
             f'{_e(_href(path, base, report_dir))}">{_e(path)}</a>)</span>'
             '</figcaption>')
  if not os.path.isfile(full):
    counts['missing'] = counts.get('missing', 0) + 1
    return (f'<figure><p class="missing">Figure file missing: {_e(path)}</p>'
            f'{caption}</figure>')
  size = os.path.getsize(full)
  if ext not in _MIME or size > MAX_EMBED_BYTES:
    counts['linked'] = counts.get('linked', 0) + 1
    why = ('too large to embed' if ext in _MIME
           else 'not an image a browser shows')
    return (f'<figure><p class="muted">{_e(name)}: {_e(why)}, see the '
            f'link below.</p>{caption}</figure>')
  with open(full, 'rb') as f:
    data = base64.b64encode(f.read()).decode('ascii')
  counts['embedded'] = counts.get('embedded', 0) + 1
  return (f'<figure><img src="data:{_MIME[ext]};base64,{data}" '
          f'alt="{_e(name)}">{caption}</figure>')


def _files_html(files: Mapping[str, Any], base: str, report_dir: str) -> str:
  if not files:
    return ''
  items = ''.join(
      f'<li>{_e(k)}: <a href="{_e(_href(str(v), base, report_dir))}">'
      f'<code>{_e(v)}</code></a></li>' for k, v in files.items())
  return f'<h3>Files</h3><ul class="files">{items}</ul>'


def _json_details(label: str, value: Any) -> str:
  text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
  if len(text) > MAX_DETAILS_CHARS:
    text = text[:MAX_DETAILS_CHARS] + '\n... (cut here; all in the JSON file)'
  return (f'<details><summary>{_e(label)}</summary><pre>{_e(text)}</pre>'
          '</details>')


def _summary_section_html(ctx: _Context, stage: str,
                          summary: Mapping[str, Any]) -> str:
  """Headline, tables, figures, files and details of one stage summary."""
  parts = []
  headline = summary.get('headline')
  if isinstance(headline, Mapping) and headline:
    parts.append(_kv(headline))
  all_tables = summary.get('tables')
  for name, rows in (all_tables.items() if isinstance(all_tables, Mapping)
                     else ()):
    if not isinstance(rows, list):
      continue
    rows = [r if isinstance(r, Mapping) else {'value': r} for r in rows]
    csv_name = ctx.tables.add(stage, name, rows)
    parts.append(_table_html(rows, caption=name, csv_name=csv_name,
                             section=f'{stage} / {name}'))
  figures = summary.get('figures')
  if isinstance(figures, Mapping) and figures:
    figs = ''.join(_figure_html(stage, str(k), str(v), ctx.base, ctx.out_dir,
                                summary, ctx.counts)
                   for k, v in figures.items())
    parts.append(f'<h3>Figures</h3><div class="figs">{figs}</div>')
  files = summary.get('files')
  if isinstance(files, Mapping):
    parts.append(_files_html(files, ctx.base, ctx.out_dir))
  scalars = summary.get('scalars')
  if isinstance(scalars, Mapping) and scalars and scalars != headline:
    rows = [dict(name=k, value=v) for k, v in scalars.items()]
    parts.append(f'<details><summary>All {len(rows)} scalars</summary>'
                 f'{_table_html(rows, max_rows=len(rows))}</details>')
  if summary.get('details'):
    parts.append(_json_details('Details (JSON)', summary['details']))
  return '\n'.join(p for p in parts if p)


def _anchor(prefix: str, name: str, used: set[str]) -> str:
  base = f'{prefix}-{_slug(name)}'
  anchor, k = base, 1
  while anchor in used:
    k += 1
    anchor = f'{base}-{k}'
  used.add(anchor)
  return anchor


# ------------------------------------------------------ the run's inputs ---


def _read_json(path: str) -> tuple[Any, str | None]:
  """(parsed JSON or None, error text or None)."""
  if not os.path.isfile(path):
    return None, None
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f), None
  except (OSError, ValueError) as e:
    return None, f'{type(e).__name__}: {e}'


def _stage_config(config, workdir: str):
  """The config that decides which stages apply (the run's if not given)."""
  if config is not None:
    return config
  saved, _ = _read_json(os.path.join(workdir, 'config.json'))
  if not isinstance(saved, dict):
    return None
  import ml_collections  # pylint: disable=g-import-not-at-top
  saved = {k: v for k, v in saved.items() if k != 'run_info'}
  try:
    return ml_collections.ConfigDict(saved)
  except Exception:  # pylint: disable=broad-except
    return None


def _applies(stage: stages.Stage, config) -> bool:
  if config is None:
    return True
  try:
    return stage.applies_to(config)
  except Exception:  # pylint: disable=broad-except
    return True


def _collect_stages(workdir: str, config) -> tuple[list[dict], list[dict]]:
  """(stages that ran, applicable stages that did not) in stage order.

  Each entry: name, description, order, folder, summary (dict), error.
  Summaries under the workdir of stages this process has not registered
  (a user's stage module loaded elsewhere) are included too.
  """
  registry = stages.discover()
  ran, missing, folders = [], [], {REPORT_DIR}
  for stage in stages.ordered():
    if stage.name == REPORT_STAGE:
      continue
    folders.add(stage.out_dir)
    saved, error = _read_json(stages.summary_path(workdir, stage))
    entry = dict(name=stage.name, description=stage.description,
                 order=stage.order, folder=stage.out_dir, error=error,
                 summary=saved if isinstance(saved, dict) else {})
    if saved is None and error is None:
      if _applies(stage, config):
        missing.append(entry)
    else:
      ran.append(entry)
  if os.path.isdir(workdir):
    for folder in sorted(os.listdir(workdir)):
      path = os.path.join(workdir, folder, stages.SUMMARY_FILE)
      if folder in folders or not os.path.isfile(path):
        continue
      saved, error = _read_json(path)
      if not isinstance(saved, dict) and error is None:
        continue
      saved = saved if isinstance(saved, dict) else {}
      name = str(saved.get('stage') or folder)
      if name == REPORT_STAGE or saved.get('kind') == SWEEP_KIND:
        continue
      known = registry.get(name)
      ran.append(dict(name=name, folder=folder, error=error, summary=saved,
                      description=known.description if known else '',
                      order=UNKNOWN_ORDER))
  ran.sort(key=lambda s: (s['order'], s['name']))
  return ran, missing


def _training_metrics(workdir: str) -> tuple[dict[str, Any], list[dict]]:
  """(final train/eval scalars, every metrics row); empty if untrained."""
  if not os.path.isfile(os.path.join(workdir, 'metrics.jsonl')):
    return {}, []
  # pylint: disable=g-import-not-at-top
  from factorecg_jax.training import train
  from factorecg_jax.training import writer
  # pylint: enable=g-import-not-at-top
  try:
    return dict(train.final_metrics(workdir)), writer.read_metrics(workdir)
  except (OSError, ValueError):
    return {}, []


def _training_figure(rows: Sequence[Mapping[str, Any]], path: str
                     ) -> str | None:
  """Loss curves (and the held-out score) of the training run, as a PNG."""
  train_pts = [(r['step'], r['train/loss']) for r in rows
               if _number(r.get('train/loss')) is not None and 'step' in r]
  eval_pts = [(r['step'], r['eval/loss']) for r in rows
              if _number(r.get('eval/loss')) is not None and 'step' in r]
  if not train_pts and not eval_pts:
    return None
  score_key = next((k for k in ('eval/r2', 'eval/macro_auroc', 'eval/auroc',
                                'eval/c_index')
                    if any(_number(r.get(k)) is not None for r in rows)),
                   None)
  # pylint: disable-next=g-import-not-at-top
  from matplotlib import figure as mfigure
  fig = mfigure.Figure(figsize=(9 if score_key else 5.5, 3.2), dpi=100)
  axes = fig.subplots(1, 2 if score_key else 1, squeeze=False)[0]
  ax = axes[0]
  if train_pts:
    ax.plot(*zip(*train_pts), '-', color='#1f77b4', label='train loss')
  if eval_pts:
    ax.plot(*zip(*eval_pts), 'o', color='#d62728', label='eval loss')
  values = [v for _, v in train_pts + eval_pts]
  if values and min(values) > 0 and max(values) / min(values) > 30:
    ax.set_yscale('log')
  ax.set_xlabel('step')
  ax.set_ylabel('loss')
  ax.legend(fontsize=8, frameon=False)
  if score_key:
    pts = [(r['step'], r[score_key]) for r in rows
           if _number(r.get(score_key)) is not None and 'step' in r]
    axes[1].plot(*zip(*pts), 'o-', color='#2ca02c')
    axes[1].set_xlabel('step')
    axes[1].set_ylabel(score_key)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig.savefig(path, format='png', facecolor='white',
              metadata={'Software': None})
  return path


# --------------------------------------------------------- first screen ---

_SCORE_LABELS = (('eval/r2', 'held-out R\u00b2 (reconstruction)'),
                 ('eval/macro_auroc', 'held-out macro AUROC'),
                 ('eval/auroc', 'held-out AUROC'),
                 ('eval/c_index', 'held-out C-index'),
                 ('eval/mae', 'held-out MAE'),
                 ('eval/loss', 'held-out loss'))


def _reconstruction(final: Mapping[str, Any],
                    encode: Mapping[str, Any] | None) -> dict[str, Any]:
  out: dict[str, Any] = {}
  if 'eval/r2' in final:
    out['eval_r2'] = final['eval/r2']
  if 'step' in final:
    out['steps'] = final['step']
  if encode:
    sc = encode.get('scalars') or {}
    for key in ('num_active', 'latents', 'kl_threshold'):
      if key in sc:
        out['active_factors' if key == 'num_active' else key] = sc[key]
  if 'active_factors' not in out and 'eval/active_units' in final:
    out['active_units_eval'] = final['eval/active_units']
  return out


def _reconstruction_card(final, encode) -> str:
  rec = _reconstruction(final, encode)
  items = []
  if 'eval_r2' in rec:
    big = f'<p class="big">R\u00b2 {_e(fmt(rec["eval_r2"], 3))}</p>'
  else:
    big = ''
  for key, label in _SCORE_LABELS:
    if key in final and key != 'eval/r2':
      items.append((label, final[key]))
  if 'active_factors' in rec:
    latents = rec.get('latents')
    value = (f'{rec["active_factors"]} of {latents}' if latents is not None
             else rec['active_factors'])
    if 'kl_threshold' in rec:
      value = f'{value} (KL > {fmt(rec["kl_threshold"])} nats)'
    items.insert(0, ('active factors', value))
  elif 'active_units_eval' in rec:
    items.insert(0, ('active units (eval)', rec['active_units_eval']))
  if 'steps' in rec:
    items.append(('training steps', rec['steps']))
  if not items and not big:
    body = '<p class="muted">Not trained yet.</p>'
  else:
    body = big + _kv(items)
    if 'eval_r2' in rec:
      body += ('<p class="muted">Share of the held-out ECGs\' variance the '
               'decoder reproduces from the factors.</p>')
  return f'<div class="card"><h3>Reconstruction</h3>{body}</div>'


def _factors_found(evaluate: Mapping[str, Any] | None,
                   encode: Mapping[str, Any] | None) -> dict[str, Any] | None:
  """Factors named by the evaluate stage, against the 14 true factors."""
  rows = ((evaluate or {}).get('tables') or {}).get('factor_names')
  if rows is None:
    return None
  # pylint: disable=g-import-not-at-top
  from factorecg_jax.analysis import interpretation
  from factorecg_jax.data import simulator
  # pylint: enable=g-import-not-at-top
  true_names = list(simulator.FACTOR_NAMES)
  columns = [str(r.get('column')) for r in rows]
  found = [n for n in true_names if n in columns]
  labels = [str(r.get('label')) for r in rows]
  out = dict(
      named=len(rows), distinct_names=len(set(labels)),
      num_true_factors=len(true_names), true_factors_found=found,
      true_factors_missing=[n for n in true_names if n not in found],
      labels={n: interpretation.FACTOR_LABELS.get(n, n) for n in true_names},
      table=[dict(factor=r.get('code'), named=r.get('label'),
                  column=r.get('column'), rho=r.get('rho')) for r in rows])
  sc = (encode or {}).get('scalars') or {}
  if 'num_active' in sc:
    out['num_active'] = sc['num_active']
  return out


def _absent(stage: str, not_run: Sequence[str]) -> str:
  """Why a stage's numbers are missing from the first screen."""
  if stage in not_run:
    return f'<p class="muted">The {_e(stage)} stage has not run yet.</p>'
  return (f'<p class="muted">The {_e(stage)} stage is not part of this run '
          '(it does not apply to its config).</p>')


def _factors_card(found: dict[str, Any] | None, evaluate,
                  not_run: Sequence[str]) -> str:
  head = '<h3>Factors found and named</h3>'
  if found is None:
    return f'<div class="card">{head}{_absent("evaluate", not_run)}</div>'
  k, n = len(found['true_factors_found']), found['num_true_factors']
  items = [('factors named', found['named']),
           ('distinct names', found['distinct_names']),
           ('true factors captured', f'{k} of {n}')]
  if 'num_active' in found:
    items.insert(0, ('active factors (encode)', found['num_active']))
  for key in ('MIG', 'DCI disentanglement'):
    value = ((evaluate or {}).get('headline') or {}).get(key)
    if value is not None:
      items.append((key, value))
  missing = [found['labels'][m] for m in found['true_factors_missing']]
  note = (f'<p class="muted">Not the best match of any factor: '
          f'{_e(", ".join(missing))}.</p>' if missing else '')
  return (f'<div class="card">{head}<p class="big">{k} of {n}</p>'
          f'{_kv(items)}{note}</div>')


_EXTERNAL = ' \u00b7 external'


def _model_group(model: str) -> str:
  low = model.lower()
  if low.startswith('oracle'):
    return 'oracle'
  if low.startswith('resnet'):
    return 'resnet'
  return 'factors'


def _test_set(model: str) -> tuple[str, str]:
  """(model name without the external suffix, its test set)."""
  if _EXTERNAL in model:
    model, _, rest = model.partition(_EXTERNAL)
    return model, 'external' + rest
  return model, 'internal'


def _short(model: str) -> str:
  return model.split(':', 1)[1].strip() if ':' in model else model


def downstream_pivot(
    rows: Sequence[Mapping[str, Any]],
    differences: Sequence[Mapping[str, Any]] = (),
) -> list[dict]:
  """The comparison table as one row per (test set, task, metric).

  Args:
    rows: the downstream stage's 'comparison' table (model, task, metric,
      value, low, high, n).
    differences: its 'differences' table (paired factor model - reference:
      task, metric, model, reference, difference, low, high, n).

  Returns:
    Rows with 'test set', 'task', 'metric' and, for each of 'factors',
    'resnet' and 'oracle', a list of {model, value, low, high, n}, and for
    'vs_resnet' and 'vs_oracle' the paired differences as such lists;
    external validation rows (model names ending ' · external (...)') form
    their own test set.
  """
  out: dict[tuple[str, str, str], dict] = {}

  def row_of(test_set, r):
    key = (test_set, str(r.get('task', '')), str(r.get('metric', '')))
    return out.setdefault(key, {'test set': key[0], 'task': key[1],
                                'metric': key[2], 'factors': [],
                                'resnet': [], 'oracle': [], 'vs_resnet': [],
                                'vs_oracle': []})

  for r in rows:
    model, test_set = _test_set(str(r.get('model', '')))
    row_of(test_set, r)[_model_group(model)].append(dict(
        model=_short(model), value=r.get('value'), low=r.get('low'),
        high=r.get('high'), n=r.get('n')))
  for d in differences:
    model, test_set = _test_set(str(d.get('model', '')))
    reference, _ = _test_set(str(d.get('reference', '')))
    group = 'vs_' + _model_group(reference)
    if group not in ('vs_resnet', 'vs_oracle'):
      continue
    name = _short(model) + ('' if group == 'vs_oracle' else
                            f' \u2212 {_short(reference)}')
    row_of(test_set, d)[group].append(dict(
        model=name, value=d.get('difference'), low=d.get('low'),
        high=d.get('high'), n=d.get('n'), signed=True))
  return list(out.values())


_GROUPS = (('factors', 'factor model'), ('resnet', 'black-box ResNet'),
           ('oracle', 'oracle (true factors)'),
           ('vs_resnet', 'factor \u2212 ResNet (paired)'),
           ('vs_oracle', 'factor \u2212 oracle (paired)'))


def _fmt_entry(e: Mapping[str, Any]) -> str:
  if not e.get('signed'):
    return fmt_ci(e['value'], e['low'], e['high'])
  value, low, high = (_number(e[k]) for k in ('value', 'low', 'high'))
  if value is None:
    return 'n/a'
  if low is None or high is None:
    return f'{value:+.3f}'
  return f'{value:+.3f} ({low:+.3f} to {high:+.3f})'


def _pivot_cell(entries: Sequence[Mapping[str, Any]]) -> str:
  if not entries:
    return '\u2013'
  return '; '.join(f'{e["model"]} {_fmt_entry(e)}' for e in entries)


def _pivot_cell_html(entries: Sequence[Mapping[str, Any]]) -> _Html:
  if not entries:
    return _Html('<span class="muted">\u2013</span>')
  return _Html('<br>'.join(
      f'{_e(_fmt_entry(e))}'
      f'<span class="sub">{_e(e["model"])}</span>' for e in entries))


def _attribution_best(explain: Mapping[str, Any] | None) -> list[dict] | None:
  """Best method per target by the ground-truth and perturbation measures."""
  tables = (explain or {}).get('tables') or {}
  rows = tables.get('ranking')
  if rows is None:
    return None
  # pylint: disable-next=g-import-not-at-top
  from factorecg_jax.stages import explain as explain_stage
  measures = (explain_stage.GROUND_TRUTH_MEASURE,
              explain_stage.PERTURBATION_MEASURE)
  tau = {r.get('target'): r.get('kendall_tau')
         for r in tables.get('agreement') or []}
  targets = list(dict.fromkeys(r.get('target') for r in rows))
  out = []
  for target in targets:
    entry: dict[str, Any] = dict(target=target)
    for measure in measures:
      best = [r for r in rows if r.get('target') == target
              and r.get('measure') == measure and r.get('best')]
      entry[measure] = [dict(method=r.get('method'), mean=r.get('mean'),
                             low=r.get('low'), high=r.get('high'))
                        for r in best]
    if target in tau:
      entry['kendall_tau'] = tau[target]
    out.append(entry)
  return out


def _attribution_rows(best: Sequence[Mapping[str, Any]], measures,
                      as_html: bool) -> list[dict]:
  rows = []
  for entry in best:
    row: dict[str, Any] = {'target': entry['target']}
    for measure in measures:
      cells = entry.get(measure) or []
      label = f'best by {measure}'
      if as_html:
        row[label] = _Html('<br>'.join(
            f'{_e(c["method"])}<span class="sub">'
            f'{_e(fmt_ci(c["mean"], c["low"], c["high"]))}</span>'
            for c in cells) or '<span class="muted">\u2013</span>')
      else:
        row[label] = '; '.join(
            f'{c["method"]} {fmt_ci(c["mean"], c["low"], c["high"])}'
            for c in cells) or '\u2013'
    if 'kendall_tau' in entry:
      row['Kendall tau (perturbation vs ground truth)'] = entry['kendall_tau']
    rows.append(row)
  return rows


# ------------------------------------------------------------ render_run ---


def _reproducibility_html(saved: Any, error: str | None) -> str:
  head = '<h2 id="reproducibility">Reproducibility</h2>'
  if error:
    return head + f'<p class="missing">config.json unreadable: {_e(error)}</p>'
  if not isinstance(saved, dict):
    return head + ('<p class="muted">No config.json: the run has not been '
                   'trained yet.</p>')
  info = saved.get('run_info') or {}
  config = {k: v for k, v in saved.items() if k != 'run_info'}
  command = info.get('command')
  if isinstance(command, list):
    command = shlex.join(str(c) for c in command)
  items = [('code version', info.get('code_version')),
           ('command', command), ('started', info.get('time')),
           ('start step', info.get('start_step')),
           ('parameters', info.get('num_params'))]
  parts = [head, _kv([(k, v) for k, v in items if v is not None])]
  for key, title in (('seeds', 'Seeds'), ('versions', 'Package versions'),
                     ('devices', 'Devices')):
    value = info.get(key)
    if isinstance(value, Mapping) and value:
      parts.append(f'<h3>{_e(title)}</h3>{_kv(value)}')
  if info:
    parts.append(_json_details('run_info (JSON)', info))
  parts.append(_json_details('Resolved config (config.json)', config))
  return '\n'.join(parts)


def _stage_status_rows(ran, missing, trained: bool, latest_step) -> list:
  rows = [dict(stage='train', status='ran' if trained else 'not run',
               created='', seconds='', checkpoint_step=latest_step or '')]
  for s in ran:
    summary = s['summary']
    status = 'ran'
    if s['error']:
      status = 'unreadable summary'
    elif (latest_step is not None and summary.get('checkpoint_step')
          not in (None, latest_step)):
      status = (f'ran at step {summary.get("checkpoint_step")} (the latest '
                f'checkpoint is step {latest_step})')
    rows.append({'stage': s['name'], 'status': status,
                 'created': summary.get('created', ''),
                 'seconds': summary.get('seconds', ''),
                 'checkpoint_step': summary.get('checkpoint_step') or ''})
  rows += [dict(stage=s['name'], status='not run', created='', seconds='',
                checkpoint_step='') for s in missing]
  return rows


_GLANCE = 'At a glance'


def _glance_html(ctx: _Context, by_name: Mapping[str, Any],
                 final: Mapping[str, Any], not_run: Sequence[str]
                 ) -> tuple[str, dict[str, Any]]:
  """The first screen, and its numbers for headline.json."""
  ctx.tables.section(_GLANCE)
  encode, evaluate = by_name.get('encode'), by_name.get('evaluate')
  found = _factors_found(evaluate, encode)
  out = ['<section id="glance"><h2>At a glance</h2><div class="cards">',
         _reconstruction_card(final, encode),
         _factors_card(found, evaluate, not_run),
         '</div>']
  out.append('<h3>Downstream: factor models vs black-box ResNet vs oracle '
             '(95 % CI)</h3>')
  tables = (by_name.get('downstream') or {}).get('tables') or {}
  comparison = tables.get('comparison')
  pivot = None
  if comparison is None:
    out.append(_absent('downstream', not_run))
  else:
    pivot = downstream_pivot(comparison, tables.get('differences') or ())
    keys = ('test set', 'task', 'metric')
    csv_name = ctx.tables.add(_GLANCE, 'downstream comparison', [
        {**{k: p[k] for k in keys},
         **{label: _pivot_cell(p[g]) for g, label in _GROUPS}}
        for p in pivot])
    out.append(_table_html([
        {**{k: p[k] for k in keys},
         **{label: _pivot_cell_html(p[g]) for g, label in _GROUPS}}
        for p in pivot], csv_name=csv_name, section=_GLANCE))
    out.append('<p class="muted">Test records of the run\'s population '
               '(internal) and of a differently drawn one (external); the '
               'oracle fits the same models on the simulator\'s true factors: '
               'the ceiling the learned factors can reach. The paired '
               'differences score both models on the same records and '
               'bootstrap resamples (below 0: the factor model is worse).'
               '</p>')
  out.append('<h3>Attribution: best method per target</h3>')
  best = _attribution_best(by_name.get('explain'))
  if best is None:
    out.append(_absent('explain', not_run))
  else:
    # pylint: disable-next=g-import-not-at-top
    from factorecg_jax.stages import explain as explain_stage
    measures = (explain_stage.GROUND_TRUTH_MEASURE,
                explain_stage.PERTURBATION_MEASURE)
    csv_name = ctx.tables.add(_GLANCE, 'attribution ranking',
                              _attribution_rows(best, measures, False))
    out.append(_table_html(_attribution_rows(best, measures, True),
                           csv_name=csv_name, section=_GLANCE))
    out.append(f'<p class="muted">{_e(measures[0])}: share of the relevance '
               'inside the region that truly determines the target; '
               f'{_e(measures[1])}: how much deleting the most relevant '
               'samples first moves the prediction (means over the explained '
               'records, 95 % bootstrap CIs).</p>')
  if found is not None:
    # Folded: one row per active factor would push the tables above off
    # the first screen.
    csv_name = ctx.tables.add(_GLANCE, 'factors named', found['table'])
    out.append(f'<details><summary>The {len(found["table"])} factors and '
               'their best-matching true factor or measurement (Spearman '
               'rho)</summary>')
    out.append(_table_html(found['table'], csv_name=csv_name,
                           section=_GLANCE))
    out.append('</details>')
  if not_run:
    out.append(f'<p class="note">Not run yet: {_e(", ".join(not_run))} '
               '(<code>--mode=all</code> runs every stage).</p>')
  out.append('</section>')
  numbers = dict(
      reconstruction=_reconstruction(final, encode),
      factors=({k: v for k, v in found.items() if k != 'labels'}
               if found else None),
      downstream=pivot, attribution=best)
  return '\n'.join(out), numbers


def _training_section(ctx: _Context, anchor: str, final: Mapping[str, Any],
                      metric_rows: Sequence[Mapping[str, Any]]) -> str:
  """The training run: final metrics and loss curves."""
  ctx.tables.section('train')
  parts = [f'<section id="{anchor}"><h2>train <span class="desc">the '
           'training run</span></h2>']
  score = [(label, final[key]) for key, label in _SCORE_LABELS
           if key in final]
  parts.append(_kv([('steps', final.get('step'))] + score))
  rows = [dict(metric=k, value=v) for k, v in final.items() if k != 'step']
  csv_name = ctx.tables.add('train', 'final metrics', rows)
  parts.append(_table_html(rows, caption='final metrics', csv_name=csv_name,
                           section='train / final metrics'))
  if _training_figure(metric_rows, os.path.join(ctx.out_dir,
                                                TRAINING_FIGURE)):
    parts.append('<h3>Figures</h3><div class="figs">' + _figure_html(
        'train', 'curves', os.path.join(REPORT_DIR, TRAINING_FIGURE),
        ctx.base, ctx.out_dir, None, ctx.counts) + '</div>')
  parts.append(_files_html({'metrics': 'metrics.jsonl',
                            'config': 'config.json'}, ctx.base, ctx.out_dir))
  parts.append('</section>')
  return '\n'.join(parts)


def _stage_section(ctx: _Context, anchor: str, entry: Mapping[str, Any]
                   ) -> str:
  """One stage's section: when it ran, then its summary."""
  summary = entry['summary']
  meta = []
  if summary.get('created'):
    meta.append(f'ran {summary["created"]}')
  if summary.get('seconds') is not None:
    meta.append(f'in {fmt(summary["seconds"])} s')
  if summary.get('checkpoint_step') is not None:
    meta.append(f'at checkpoint step {summary["checkpoint_step"]}')
  meta.append(f'outputs in {entry["folder"]}/')
  parts = [f'<section id="{anchor}"><h2>{_e(entry["name"])} '
           f'<span class="desc">{_e(entry["description"])}</span></h2>',
           f'<p class="muted">{_e(", ".join(meta))}</p>']
  if entry['error']:
    parts.append('<p class="missing">summary.json unreadable: '
                 f'{_e(entry["error"])}</p>')
  ctx.tables.section(entry['name'])
  parts.append(_summary_section_html(ctx, entry['name'], summary))
  parts.append('</section>')
  return '\n'.join(parts)


def render_run(workdir: str, config=None) -> str:
  """Writes the run's report under `<workdir>/report/` (module docstring).

  Args:
    workdir: the run directory (trained or not, any stages run or not).
    config: the experiment config; decides which of the stages that have not
      run apply to the run (default: the run's config.json).

  Returns:
    The path of `<workdir>/report/index.html`.
  """
  workdir = os.fspath(workdir)
  out_dir = os.path.join(workdir, REPORT_DIR)
  os.makedirs(out_dir, exist_ok=True)
  ran, missing = _collect_stages(workdir, _stage_config(config, workdir))
  by_name = {s['name']: s['summary'] for s in ran}
  final, metric_rows = _training_metrics(workdir)
  trained = bool(final)
  latest_step = stages.latest_checkpoint_step(workdir)
  not_run = ([] if trained else [stages.TRAIN]) + [s['name'] for s in missing]
  ctx = _Context(workdir, out_dir)
  title = f'FactorECG report: {os.path.basename(os.path.abspath(workdir))}'

  glance, numbers = _glance_html(ctx, by_name, final, not_run)
  # Stage sections in stage order, training among them.
  sections = []  # (order, name, anchor, html)
  if trained:
    anchor = _anchor('stage', stages.TRAIN, ctx.anchors)
    sections.append((TRAINING_ORDER, stages.TRAIN, anchor,
                     _training_section(ctx, anchor, final, metric_rows)))
  for entry in ran:
    anchor = _anchor('stage', entry['name'], ctx.anchors)
    sections.append((entry['order'], entry['name'], anchor,
                     _stage_section(ctx, anchor, entry)))
  sections.sort(key=lambda t: t[0])
  status = _stage_status_rows(ran, missing, trained, latest_step)
  saved_config, config_error = _read_json(os.path.join(workdir,
                                                       'config.json'))
  nav = ''.join(f'<li><a href="#{a}">{_e(n)}</a></li>'
                for _, n, a, _ in sections)
  header = (f'<h1>{_e(title)}</h1><p class="muted">Workdir '
            f'<code>{_e(os.path.abspath(workdir))}</code>; written '
            f'{_e(_now())}. Open this file in any browser; it needs no '
            'network.</p><nav><ul><li><a href="#glance">at a glance</a></li>'
            f'{nav}<li><a href="#reproducibility">reproducibility</a></li>'
            '</ul></nav>')
  body = '\n'.join(
      [glance, _table_html(status, caption='Stages', max_rows=len(status))]
      + [h for *_, h in sections]
      + [_reproducibility_html(saved_config, config_error)])
  footer = ('<p>Written by <code>factorecg_jax.report</code>. Every table '
            f'with all rows: <a href="{TABLES_NAME}">{TABLES_NAME}</a> and '
            f'<code>{CSV_DIR}/</code>; the headline numbers: '
            f'<a href="{HEADLINE_NAME}">{HEADLINE_NAME}</a>.</p>')
  path = os.path.join(out_dir, PAGE_NAME)
  _write(path, _html_page(title, header, body, footer))
  _write(os.path.join(out_dir, TABLES_NAME), ctx.tables.markdown(title))
  headline = dict(
      workdir=os.path.abspath(workdir), created=_now(), **numbers,
      stages_run=[name for _, name, _, _ in sections],
      stages_not_run=not_run, figures=dict(ctx.counts),
      stage_headlines={s['name']: s['summary'].get('headline', {})
                       for s in ran})
  _write(os.path.join(out_dir, HEADLINE_NAME),
         json.dumps(headline, indent=2, ensure_ascii=False, default=str)
         + '\n')
  return path


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(
      timespec='seconds')


def _write(path: str, text: str) -> None:
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    f.write(text)
  os.replace(path + '.tmp', path)


# ---------------------------------------------------------- render_sweep ---

SWEEP_SUMMARY = os.path.join('results', 'summary.json')


def render_sweep(sweep_dir: str) -> str:
  """Writes `<sweep_dir>/report/index.html` from the sweep's summary.

  Args:
    sweep_dir: the sweep directory, with `results/summary.json` (the shared
      summary shape, "kind": "sweep", tables 'by_point' (one row per swept
      setting: the trade-off) and 'trials', figure paths relative to
      `sweep_dir`).

  Returns:
    The path of the page (tables.md and tables/*.csv beside it).

  Raises:
    FileNotFoundError: the sweep has no results/summary.json yet.
    ValueError: that file is not a sweep summary.
  """
  sweep_dir = os.fspath(sweep_dir)
  source = os.path.join(sweep_dir, SWEEP_SUMMARY)
  if not os.path.isfile(source):
    raise FileNotFoundError(f'No sweep summary at {source}: run the sweep '
                            'first.')
  with open(source, encoding='utf-8') as f:
    summary = json.load(f)
  if not isinstance(summary, dict) or summary.get('kind') != SWEEP_KIND:
    raise ValueError(f'{source} is not a sweep summary (no "kind": '
                     f'"{SWEEP_KIND}").')
  out_dir = os.path.join(sweep_dir, REPORT_DIR)
  os.makedirs(out_dir, exist_ok=True)
  details = summary.get('details')
  name = str(summary.get('name')
             or (details.get('sweep') if isinstance(details, Mapping)
                 else None)
             or os.path.basename(os.path.abspath(sweep_dir)))
  title = f'FactorECG sweep: {name}'
  ctx = _Context(sweep_dir, out_dir)
  all_tables = summary.get('tables') or {}
  order = [k for k in ('by_point', 'trials') if k in all_tables]
  order += [k for k in all_tables if k not in order]
  captions = {'by_point': 'Trade-off: one row per swept setting',
              'trials': 'Every trial'}
  parts = []
  headline = summary.get('headline') or summary.get('scalars') or {}
  if isinstance(headline, Mapping) and headline:
    parts.append(f'<section id="glance"><h2>At a glance</h2>{_kv(headline)}'
                 '</section>')
  figures = summary.get('figures') or {}
  plots = ''
  if isinstance(figures, Mapping) and figures:
    plots = ('<section id="plots"><h2>Plots</h2><div class="figs">'
             + ''.join(_figure_html(SWEEP_KIND, str(k), str(v), sweep_dir,
                                    out_dir, summary, ctx.counts)
                       for k, v in figures.items()) + '</div></section>')
  ctx.tables.section(SWEEP_KIND)
  for key in order:
    rows = all_tables[key]
    if not isinstance(rows, list):
      continue
    rows = [r if isinstance(r, Mapping) else {'value': r} for r in rows]
    csv_name = ctx.tables.add(SWEEP_KIND, key, rows)
    parts.append(f'<section id="{_anchor("table", key, ctx.anchors)}">'
                 f'<h2>{_e(captions.get(key, key))}</h2>'
                 + _table_html(rows, csv_name=csv_name,
                               section=f'{SWEEP_KIND} / {key}')
                 + '</section>')
    if key == 'by_point':  # the plots of the trade-off right below it
      parts.append(plots)
      plots = ''
  parts.append(plots)
  files = summary.get('files') or {}
  if isinstance(files, Mapping):
    parts.append(_files_html(files, sweep_dir, out_dir))
  if details:
    parts.append(_json_details('Details (JSON)', details))
  header = (f'<h1>{_e(title)}</h1><p class="muted">Sweep directory '
            f'<code>{_e(os.path.abspath(sweep_dir))}</code>; written '
            f'{_e(_now())}. Open this file in any browser; it needs no '
            'network.</p>')
  footer = ('<p>Written by <code>factorecg_jax.report</code>. Every table '
            f'with all rows: <a href="{TABLES_NAME}">{TABLES_NAME}</a> and '
            f'<code>{CSV_DIR}/</code>.</p>')
  path = os.path.join(out_dir, PAGE_NAME)
  _write(path, _html_page(title, header, '\n'.join(p for p in parts if p),
                          footer))
  _write(os.path.join(out_dir, TABLES_NAME), ctx.tables.markdown(title))
  return path
