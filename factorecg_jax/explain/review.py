"""Blinded expert review of attribution heatmaps.

The qualitative arm of Storås et al. (JAMIA 2025): cardiologists rate
heatmaps from several attribution methods without knowing which method made
which, and their ratings are compared with the objective scores (deletion
AOPC, ground-truth relevance mass).

The workflow:

1. `write_review_page(out_dir, items)` writes `review.html`, one
   self-contained page (images as data URIs, inline CSS and JS, a
   Content-Security-Policy that forbids every network load) showing the
   heatmaps in a seeded shuffled order with no method names, each with a 1-5
   rating and a comment; and `review_key.json`, the key that unblinds it.
   Send raters the page only.
2. Each rater opens the page in a browser (it works offline, from a file),
   rates, and exports `ratings.csv`; ratings survive a reload
   (localStorage, keyed by the page's id).
3. `load_ratings` reads and checks one or several raters' CSVs, `unblind`
   attaches the methods from the key, and `agreement` gives per target the
   Kendall tau between the methods' mean rating and their objective score;
   `ratings_table` prints both as markdown.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import hashlib
import html
import json
import math
import os
import pathlib
import re
import struct
import warnings
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np
from scipy import stats

PAGE_NAME = 'review.html'
KEY_NAME = 'review_key.json'
CSV_NAME = 'ratings.csv'
CSV_COLUMNS = ('item_id', 'record_id', 'target', 'rating', 'comment', 'rater',
               'timestamp')
MIN_RATING, MAX_RATING = 1, 5

DEFAULT_TITLE = 'ECG attribution heatmaps: expert review'
DEFAULT_INSTRUCTIONS = (
    'Each panel shows a 12-lead ECG with a heatmap of the regions a model '
    'relied on to predict the stated target (for example qrs_ms, the QRS '
    'duration). Rate how well the highlighted regions match the waveform '
    'features you would use to judge that target: 1 = not at all or '
    'misleading, 3 = partly, 5 = exactly the relevant features. Panels come '
    'from different explanation methods in a random order; judge each on its '
    'own.\n\n'
    'Enter your name first. Ratings are saved in this browser as you go; '
    'when done, press "Export CSV" and send the downloaded ratings.csv (or '
    'the text in the box below it).'
)

_DATA_URI = re.compile(r'data:image/png;base64,[A-Za-z0-9+/=]*')
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# Ancillary chunks that carry text or a time stamp: matplotlib writes its
# version there and callers may add a title, which could name the method.
_PNG_TEXT_CHUNKS = (b'tEXt', b'zTXt', b'iTXt', b'tIME', b'eXIf')


@dataclasses.dataclass(frozen=True)
class ReviewItem:
  """One heatmap to rate.

  Attributes:
    record_id: the ECG record shown (displayed to the rater).
    target: what the model predicts, e.g. 'qrs_ms' (displayed).
    method: the attribution method (never displayed; only in the key).
    png: the rendered heatmap figure as PNG bytes. The figure itself must not
      name the method (no title or legend saying it); text chunks in the PNG
      are stripped.
    caption: optional text shown under the figure (e.g. the prediction).
    details: optional extra (label, value) text shown with the figure.
  """
  record_id: str
  target: str
  method: str
  png: bytes
  caption: str = ''
  details: tuple[tuple[str, str], ...] = ()


class ReviewPage(NamedTuple):
  """What `write_review_page` wrote."""
  html: pathlib.Path  # the page to send to raters
  key: pathlib.Path  # the unblinding key; keep it from the raters
  page_id: str  # identifies the page (localStorage key, CSV provenance)
  item_ids: tuple[str, ...]  # in display order


def figure_png(fig: Any, *, dpi: int = 100) -> bytes:
  """Renders a matplotlib figure to PNG bytes without metadata.

  Args:
    fig: a `matplotlib.figure.Figure`.
    dpi: resolution, dots per inch.

  Returns:
    The PNG file's bytes.
  """
  import io  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=dpi, facecolor='white',
              metadata={'Software': None})
  return buf.getvalue()


def _strip_png_text(png: bytes, where: str) -> bytes:
  """Checks a PNG and drops its text/time chunks (they could unblind)."""
  if not isinstance(png, (bytes, bytearray)) or not png.startswith(
      _PNG_SIGNATURE):
    raise ValueError(f'{where}: png is not PNG bytes')
  out = [_PNG_SIGNATURE]
  pos = len(_PNG_SIGNATURE)
  seen_end = False
  while pos < len(png):
    if pos + 8 > len(png):
      raise ValueError(f'{where}: truncated PNG chunk header')
    (length,) = struct.unpack('>I', png[pos:pos + 4])
    kind = bytes(png[pos + 4:pos + 8])
    end = pos + 12 + length
    if end > len(png):
      raise ValueError(f'{where}: truncated PNG chunk {kind!r}')
    if kind not in _PNG_TEXT_CHUNKS:
      out.append(bytes(png[pos:end]))
    pos = end
    if kind == b'IEND':
      seen_end = True
      break
  if not seen_end:
    raise ValueError(f'{where}: PNG has no IEND chunk')
  return b''.join(out)


def _method_pattern(method: str) -> re.Pattern[str]:
  """Matches a method name as a word, any of '_', '-', ' ' or none between
  its parts (so 'grad_cam' also finds 'Grad-CAM' and 'GradCAM')."""
  parts = [re.escape(p) for p in re.split(r'[\s_\-]+', method.strip()) if p]
  return re.compile(r'(?<![A-Za-z0-9])' + r'[\s_\-]?'.join(parts)
                    + r'(?![A-Za-z0-9])', re.IGNORECASE)


def _check_items(items: Sequence[ReviewItem]) -> list[ReviewItem]:
  items = list(items)
  if not items:
    raise ValueError('items is empty: nothing to review')
  seen = set()
  for i, item in enumerate(items):
    if not isinstance(item, ReviewItem):
      raise TypeError(f'items[{i}] is a {type(item).__name__}, not a '
                      'ReviewItem')
    for name in ('record_id', 'target', 'method', 'caption'):
      if not isinstance(getattr(item, name), str):
        raise TypeError(f'items[{i}].{name} must be a str')
    for name in ('record_id', 'target', 'method'):
      if not getattr(item, name).strip():
        raise ValueError(f'items[{i}].{name} is empty')
    triple = (item.record_id, item.target, item.method)
    if triple in seen:
      raise ValueError(f'items[{i}] repeats (record_id, target, method) = '
                       f'{triple!r}')
    seen.add(triple)
  return items


def _check_blind(items: Sequence[ReviewItem], texts: Mapping[str, str]) -> None:
  """Refuses text shown on the page that names a method."""
  for method in sorted({item.method for item in items}):
    pattern = _method_pattern(method)
    for where, text in texts.items():
      if pattern.search(text):
        raise ValueError(
            f'{where} names the method {method!r}; the page would not be '
            'blind')


def _json_for_script(value: Any) -> str:
  """JSON safe to put inside a <script> element.

  `<`, `>` and `&` become \\u escapes, so no `</script>` or `<!--` can end
  or change the element; non-ASCII (including U+2028/9) is escaped too.
  """
  text = json.dumps(value, ensure_ascii=True, sort_keys=True)
  return (text.replace('<', '\\u003c').replace('>', '\\u003e')
          .replace('&', '\\u0026'))


def _page_id(title: str, seed: int, items: Sequence[ReviewItem]) -> str:
  h = hashlib.sha256()
  h.update(json.dumps([title, seed]).encode())
  for item in items:
    h.update(json.dumps([item.record_id, item.target, item.method,
                         item.caption]).encode())
    h.update(hashlib.sha256(item.png).digest())
  return h.hexdigest()[:12]


def _paragraphs(text: str) -> str:
  blocks = [b.strip() for b in re.split(r'\n\s*\n', text) if b.strip()]
  return '\n'.join(f'<p>{html.escape(b)}</p>' for b in blocks)


_CSS = """
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, Arial,
  sans-serif; margin: 0; color: #1b1b1b; background: #f4f4f2; }
header { position: sticky; top: 0; z-index: 2; background: #fff;
  border-bottom: 1px solid #ccc; padding: 0.5rem 1rem; display: flex;
  flex-wrap: wrap; gap: 1rem; align-items: center; }
header h1 { font-size: 1.1rem; margin: 0; flex: 1 1 auto; }
#progress { font-weight: 600; }
main { max-width: 1100px; margin: 0 auto; padding: 1rem; }
.instructions { background: #fff; padding: 0.5rem 1rem; border-radius: 6px; }
.item { background: #fff; margin: 1rem 0; padding: 1rem; border-radius: 6px;
  border-left: 6px solid #bbb; }
.item.rated { border-left-color: #2e7d32; }
.item h2 { font-size: 1rem; margin: 0 0 0.5rem 0; }
.meta { margin: 0 0 0.5rem 0; }
.meta dt { font-weight: 600; display: inline; }
.meta dd { display: inline; margin: 0 1rem 0 0.25rem; }
.item img { display: block; max-width: 100%; height: auto;
  border: 1px solid #ddd; }
.caption { margin: 0.25rem 0 0.5rem 0; color: #444; }
fieldset.rating { border: 1px solid #ccc; border-radius: 4px;
  margin: 0.5rem 0; }
fieldset.rating label { margin-right: 1rem; white-space: nowrap;
  cursor: pointer; }
textarea { width: 100%; font-family: inherit; }
textarea.comment { min-height: 2.5rem; }
#csv-output { min-height: 8rem; font-family: monospace; font-size: 0.8rem; }
footer { max-width: 1100px; margin: 0 auto; padding: 0 1rem 2rem 1rem; }
button { font-size: 1rem; padding: 0.3rem 0.8rem; cursor: pointer; }
"""

# Runs after the DOM is built (the script sits at the end of <body>). All
# data comes from the JSON block; the images are already in the markup.
_JS = r"""
(function () {
  'use strict';
  var DATA = JSON.parse(document.getElementById('review-data').textContent);
  var KEY = 'factorecg_jax.review.' + DATA.page_id;
  var COLUMNS = DATA.columns;
  var state = {rater: '', items: {}};

  function load() {
    try {
      var raw = window.localStorage.getItem(KEY);
      if (raw) {
        var saved = JSON.parse(raw);
        if (saved && typeof saved === 'object') {
          state.rater = typeof saved.rater === 'string' ? saved.rater : '';
          state.items = (saved.items && typeof saved.items === 'object') ?
              saved.items : {};
        }
      }
    } catch (e) {
      setStatus('Could not read saved ratings: ' + e);
    }
  }

  function save() {
    try {
      window.localStorage.setItem(KEY, JSON.stringify(state));
    } catch (e) {
      setStatus('Could not save ratings in this browser (' + e +
                '); export the CSV before closing the page.');
    }
  }

  function setStatus(text) {
    document.getElementById('status').textContent = text;
  }

  function entry(id) {
    if (!state.items[id]) {
      state.items[id] = {rating: null, comment: '', timestamp: ''};
    }
    return state.items[id];
  }

  function validRating(r) {
    return typeof r === 'number' && r >= DATA.min_rating &&
        r <= DATA.max_rating && Math.floor(r) === r;
  }

  function countRated() {
    var n = 0;
    DATA.items.forEach(function (it) {
      var e = state.items[it.item_id];
      if (e && validRating(e.rating)) { n += 1; }
    });
    return n;
  }

  function csvField(value) {
    var s = (value === null || value === undefined) ? '' : String(value);
    return '"' + s.replace(/"/g, '""') + '"';
  }

  function buildCsv() {
    var lines = [COLUMNS.join(',')];
    DATA.items.forEach(function (it) {
      var e = state.items[it.item_id] || {};
      var row = {
        item_id: it.item_id, record_id: it.record_id, target: it.target,
        rating: validRating(e.rating) ? e.rating : '',
        comment: e.comment || '', rater: state.rater,
        timestamp: e.timestamp || ''
      };
      lines.push(COLUMNS.map(function (c) { return csvField(row[c]); })
                 .join(','));
    });
    return lines.join('\r\n') + '\r\n';
  }

  function refresh() {
    var n = countRated();
    document.getElementById('progress').textContent =
        n + ' of ' + DATA.items.length + ' rated';
    DATA.items.forEach(function (it) {
      var e = state.items[it.item_id];
      document.getElementById('item-' + it.item_id).classList.toggle(
          'rated', !!(e && validRating(e.rating)));
    });
    document.getElementById('csv-output').value = buildCsv();
  }

  function touch(id) {
    entry(id).timestamp = new Date().toISOString();
    save();
    refresh();
  }

  function apply() {
    document.getElementById('rater').value = state.rater;
    DATA.items.forEach(function (it) {
      var e = state.items[it.item_id];
      if (!e) { return; }
      if (validRating(e.rating)) {
        var radio = document.getElementById(
            'rating-' + it.item_id + '-' + e.rating);
        if (radio) { radio.checked = true; }
      }
      document.getElementById('comment-' + it.item_id).value =
          e.comment || '';
    });
  }

  function exportCsv() {
    var text = buildCsv();
    document.getElementById('csv-output').value = text;
    var blob = new Blob([text], {type: 'text/csv;charset=utf-8'});
    var url = URL.createObjectURL(blob);
    var link = document.createElement('a');
    link.href = url;
    link.download = DATA.csv_name;
    link.id = 'csv-download';
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(function () { URL.revokeObjectURL(url); }, 10000);
    var n = countRated();
    setStatus('Exported ' + n + ' of ' + DATA.items.length +
              ' ratings to ' + DATA.csv_name + '.');
  }

  function copyCsv() {
    var box = document.getElementById('csv-output');
    box.value = buildCsv();
    box.focus();
    box.select();
    var done = false;
    try { done = document.execCommand('copy'); } catch (e) { done = false; }
    setStatus(done ? 'CSV copied to the clipboard.' :
              'Select the text in the box and copy it by hand.');
  }

  load();
  apply();
  document.getElementById('rater').addEventListener('input', function (ev) {
    state.rater = ev.target.value;
    save();
    refresh();
  });
  Array.prototype.forEach.call(
      document.querySelectorAll('input.rating'), function (radio) {
        radio.addEventListener('change', function (ev) {
          var id = ev.target.getAttribute('data-item');
          entry(id).rating = parseInt(ev.target.value, 10);
          touch(id);
        });
      });
  Array.prototype.forEach.call(
      document.querySelectorAll('textarea.comment'), function (box) {
        box.addEventListener('input', function (ev) {
          var id = ev.target.getAttribute('data-item');
          entry(id).comment = ev.target.value;
          touch(id);
        });
      });
  document.getElementById('export-csv').addEventListener('click', exportCsv);
  document.getElementById('copy-csv').addEventListener('click', copyCsv);
  refresh();
  document.body.setAttribute('data-ready', 'true');
})();
"""


def _csp_hash(text: str) -> str:
  digest = hashlib.sha256(text.encode('utf-8')).digest()
  return "'sha256-" + base64.b64encode(digest).decode('ascii') + "'"


def _item_html(position: int, total: int, item_id: str, item: ReviewItem,
               png: bytes) -> str:
  esc = html.escape
  iid = esc(item_id)
  meta = [('Record', item.record_id), ('Target', item.target)]
  meta += [(str(k), str(v)) for k, v in item.details]
  meta_html = ''.join(f'<dt>{esc(k)}:</dt><dd>{esc(v)}</dd>' for k, v in meta)
  radios = []
  for r in range(MIN_RATING, MAX_RATING + 1):
    radios.append(
        f'<label for="rating-{iid}-{r}"><input type="radio" class="rating" '
        f'name="rating-{iid}" id="rating-{iid}-{r}" value="{r}" '
        f'data-item="{iid}"> {r}</label>')
  caption = (f'<p class="caption">{esc(item.caption)}</p>'
             if item.caption else '')
  data_uri = 'data:image/png;base64,' + base64.b64encode(png).decode('ascii')
  return f"""
<section class="item" id="item-{iid}" data-item="{iid}">
<h2>Item {position} of {total}</h2>
<dl class="meta">{meta_html}</dl>
<img class="heatmap" id="img-{iid}" alt="Heatmap, item {position}"
 src="{data_uri}">
{caption}
<fieldset class="rating" id="rating-{iid}">
<legend>Rating (1 = not at all, 5 = exactly the relevant features)</legend>
{''.join(radios)}
</fieldset>
<label for="comment-{iid}">Comment (optional)</label>
<textarea class="comment" id="comment-{iid}" data-item="{iid}"
 rows="2"></textarea>
</section>"""


def write_review_page(
    out_dir: str | os.PathLike[str],
    items: Sequence[ReviewItem],
    *,
    title: str = DEFAULT_TITLE,
    seed: int = 0,
    rater_instructions: str = DEFAULT_INSTRUCTIONS,
    key_path: str | os.PathLike[str] | None = None,
) -> ReviewPage:
  """Writes a blinded, shuffled, self-contained review page and its key.

  The page shows every item's figure with its record id, target and caption
  (HTML-escaped), a 1-5 rating (radio inputs with ids
  `rating-<item_id>-<r>`, class `rating`), a comment box (`comment-<item_id>`),
  a rater name field (`rater`), a progress counter (`progress`, "3 of 9
  rated"), an "Export CSV" button (`export-csv`) that downloads `ratings.csv`
  with columns `CSV_COLUMNS`, and the same CSV in a text box (`csv-output`).
  Method names appear nowhere in the page; item ids are `<page_id>-<nnn>`
  numbered in display order, so they reveal nothing either.

  Args:
    out_dir: directory for `review.html` (and the key, by default); created
      if missing.
    items: the heatmaps; at least one, no repeated (record, target, method).
    title: page title.
    seed: seeds the display order (`np.random.default_rng(seed)`).
    rater_instructions: plain text shown above the items; blank lines
      separate paragraphs.
    key_path: where to write the key; default `out_dir/review_key.json`.
      Keep it from the raters.

  Returns:
    The paths written, the page id and the item ids in display order.

  Raises:
    ValueError: no items, a repeated item, a PNG that is not one, or shown
      text (title, instructions, record ids, targets, captions, details)
      that names a method.
    TypeError: an item is not a `ReviewItem` or a field has the wrong type.
  """
  items = _check_items(items)
  pngs = [_strip_png_text(item.png, f'items[{i}]')
          for i, item in enumerate(items)]
  shown = {'title': title, 'rater_instructions': rater_instructions}
  for i, item in enumerate(items):
    shown[f'items[{i}].record_id'] = item.record_id
    shown[f'items[{i}].target'] = item.target
    shown[f'items[{i}].caption'] = item.caption
    for d, (k, v) in enumerate(item.details):
      shown[f'items[{i}].details[{d}]'] = f'{k}: {v}'
  _check_blind(items, shown)

  seed = int(seed)
  page_id = _page_id(title, seed, items)
  order = np.random.default_rng(seed).permutation(len(items))
  width = max(3, len(str(len(items))))
  item_ids = tuple(f'{page_id}-{n + 1:0{width}d}' for n in range(len(items)))

  data = {
      'page_id': page_id,
      'columns': list(CSV_COLUMNS),
      'csv_name': CSV_NAME,
      'min_rating': MIN_RATING,
      'max_rating': MAX_RATING,
      'items': [{'item_id': item_ids[n],
                 'record_id': items[j].record_id,
                 'target': items[j].target}
                for n, j in enumerate(order)],
  }
  body = '\n'.join(
      _item_html(n + 1, len(items), item_ids[n], items[j], pngs[j])
      for n, j in enumerate(order))
  # Hash-pinned inline code and no network: even an escaping bug elsewhere
  # could neither run injected script nor load anything.
  csp = ("default-src 'none'; img-src data:; "
         f"style-src {_csp_hash(_CSS)}; script-src {_csp_hash(_JS)}; "
         "base-uri 'none'; form-action 'none'")
  esc = html.escape
  page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="review-page-id" content="{esc(page_id)}">
<title>{esc(title)}</title>
<link rel="icon" href="data:,">
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>{esc(title)}</h1>
<label for="rater">Rater</label>
<input type="text" id="rater" autocomplete="name" placeholder="your name">
<span id="progress" aria-live="polite">0 of {len(items)} rated</span>
</header>
<main>
<div class="instructions">
{_paragraphs(rater_instructions)}
<noscript><p>This page needs JavaScript to record ratings.</p></noscript>
</div>
{body}
</main>
<footer>
<p><button type="button" id="export-csv">Export CSV</button>
<button type="button" id="copy-csv">Copy CSV</button>
<span id="status" aria-live="polite"></span></p>
<label for="csv-output">Ratings as CSV (copy this if the download does not
work):</label>
<textarea id="csv-output" readonly rows="8"></textarea>
</footer>
<script type="application/json"
 id="review-data">{_json_for_script(data)}</script>
<script>{_JS}</script>
</body>
</html>
"""
  # The template too must not name a method (e.g. one called 'rating').
  _check_blind(items, {'the page template': _DATA_URI.sub('', page)})

  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  html_path = out_dir / PAGE_NAME
  html_path.write_text(page, encoding='utf-8')

  key = {
      'page_id': page_id,
      'title': title,
      'seed': seed,
      'items': {
          item_ids[n]: {
              'position': n + 1,
              'method': items[j].method,
              'record_id': items[j].record_id,
              'target': items[j].target,
              'caption': items[j].caption,
          } for n, j in enumerate(order)
      },
  }
  key_path = (out_dir / KEY_NAME if key_path is None
              else pathlib.Path(key_path))
  key_path.parent.mkdir(parents=True, exist_ok=True)
  key_path.write_text(json.dumps(key, indent=2, ensure_ascii=False) + '\n',
                      encoding='utf-8')
  return ReviewPage(html=html_path, key=key_path, page_id=page_id,
                    item_ids=item_ids)


def _key_items(key: str | os.PathLike[str] | Mapping[str, Any]
               ) -> dict[str, Mapping[str, Any]]:
  """The item_id -> entry mapping of a key file, its dict, or that mapping."""
  if isinstance(key, (str, os.PathLike)):
    key = json.loads(pathlib.Path(key).read_text(encoding='utf-8'))
  if not isinstance(key, Mapping):
    raise TypeError(f'key must be a path or a mapping, not '
                    f'{type(key).__name__}')
  entries = key.get('items', key)
  if not isinstance(entries, Mapping):
    raise ValueError("key['items'] must map item ids to entries")
  for item_id, entry in entries.items():
    if not isinstance(entry, Mapping) or not {
        'method', 'record_id', 'target'} <= set(entry):
      raise ValueError(f'key entry {item_id!r} lacks method, record_id or '
                       'target')
  return dict(entries)


def load_ratings(
    csv_paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    key: str | os.PathLike[str] | Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
  """Reads and checks raters' exported CSVs, several combined.

  Rows with an empty rating (items the rater skipped) are left out.

  Args:
    csv_paths: one CSV path or several (one per rater, or per session).
    key: optional key (path, loaded dict, or its 'items' mapping); with it,
      item ids must be known and their record id and target must match.

  Returns:
    One dict per rating, in file then row order, with keys `CSV_COLUMNS`
    (rating an int in 1..5, the rest str) plus 'source' (the file path).

  Raises:
    ValueError: a file lacks a column, a rating is not an integer in 1..5, an
      item id is empty or unknown to the key, a record id or target differs
      from the key, or one rater rated one item twice.
  """
  if isinstance(csv_paths, (str, os.PathLike)):
    csv_paths = [csv_paths]
  paths = [pathlib.Path(p) for p in csv_paths]
  if not paths:
    raise ValueError('no CSV files given')
  entries = None if key is None else _key_items(key)
  rows: list[dict[str, Any]] = []
  first_seen: dict[tuple[str, str], str] = {}
  for path in paths:
    with path.open(newline='', encoding='utf-8-sig') as f:
      reader = csv.DictReader(f)
      missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
      if missing:
        raise ValueError(f'{path}: missing column(s) {", ".join(missing)} '
                         f'(expected {", ".join(CSV_COLUMNS)})')
      for row in reader:
        where = f'{path}:{reader.line_num}'
        if None in row:
          raise ValueError(f'{where}: more fields than columns')
        row = {c: (row[c] or '') for c in CSV_COLUMNS}
        item_id = row['item_id'].strip()
        if not item_id:
          raise ValueError(f'{where}: empty item_id')
        if entries is not None:
          if item_id not in entries:
            raise ValueError(f'{where}: unknown item id {item_id!r} (not in '
                             'the key: a CSV from another review page?)')
          for field in ('record_id', 'target'):
            if row[field] != str(entries[item_id][field]):
              raise ValueError(
                  f'{where}: {field} {row[field]!r} of item {item_id!r} '
                  f'differs from the key ({entries[item_id][field]!r})')
        text = row['rating'].strip()
        if not text:
          continue
        try:
          rating = int(text)
        except ValueError:
          rating = None
        if rating is None or not MIN_RATING <= rating <= MAX_RATING:
          raise ValueError(f'{where}: rating {text!r} of item {item_id!r} is '
                           f'not an integer in {MIN_RATING}..{MAX_RATING}')
        rater = row['rater'].strip()
        seen = first_seen.get((rater, item_id))
        if seen is not None:
          raise ValueError(
              f'{where}: rater {rater!r} rated item {item_id!r} again (first '
              f'at {seen}); give each rater a distinct name in the rater '
              'column, or drop the older export')
        first_seen[(rater, item_id)] = where
        rows.append(dict(row, item_id=item_id, rating=rating, rater=rater,
                         source=str(path)))
  return rows


def unblind(
    ratings: Iterable[Mapping[str, Any]],
    key: str | os.PathLike[str] | Mapping[str, Any],
) -> list[dict[str, Any]]:
  """Attaches the method of each rated item from the key.

  Args:
    ratings: rows from `load_ratings`.
    key: the key file's path, its loaded dict, or its 'items' mapping.

  Returns:
    The rows, copied, each with 'method' (and 'position', the item's place on
    the page, when the key has it).

  Raises:
    ValueError: an item id is not in the key, or its record id or target
      differs from the key.
  """
  entries = _key_items(key)
  out = []
  for row in ratings:
    item_id = row['item_id']
    if item_id not in entries:
      raise ValueError(f'item id {item_id!r} is not in the key')
    entry = entries[item_id]
    for field in ('record_id', 'target'):
      if field in row and str(row[field]) != str(entry[field]):
        raise ValueError(f'item {item_id!r}: {field} {row[field]!r} differs '
                         f'from the key ({entry[field]!r})')
    new = dict(row, method=entry['method'], record_id=entry['record_id'],
               target=entry['target'])
    if 'position' in entry:
      new['position'] = entry['position']
    out.append(new)
  return out


def agreement(
    unblinded: Iterable[Mapping[str, Any]],
    scores: Mapping[str, Mapping[str, float]],
    *,
    higher_is_better: bool = True,
) -> dict[str, dict[str, Any]]:
  """Kendall tau between experts' mean rating and an objective score.

  Per target, each method's ratings (over records and raters) are averaged
  and `scipy.stats.kendalltau` (tau-b, ties allowed) compares those means
  with the methods' scores. Only methods with both ratings and a finite score
  count. tau > 0: the experts order the methods as the score does.

  Args:
    unblinded: rows from `unblind` (need 'target', 'method', 'rating').
    scores: target -> method -> objective score, e.g. deletion AOPC or
      ground-truth relevance mass.
    higher_is_better: False for scores where lower is better (the score is
      negated before comparing, so tau stays "agreement").

  Returns:
    target -> dict(kendall_tau, p_value, n_methods, mean_rating (method ->
    float), n_ratings (method -> int), score (method -> float)), for the
    targets both rated and scored, sorted. tau and p are NaN with fewer
    than two methods or when either side is constant.

  Raises:
    ValueError: no target is both rated and scored.
  """
  sums: dict[str, dict[str, list[int]]] = {}
  for row in unblinded:
    per = sums.setdefault(str(row['target']), {})
    per.setdefault(str(row['method']), []).append(int(row['rating']))
  targets = sorted(set(sums) & set(scores))
  if not targets:
    raise ValueError(f'no target is both rated ({sorted(sums)}) and scored '
                     f'({sorted(scores)})')
  out = {}
  for target in targets:
    methods = sorted(
        m for m in sums[target]
        if m in scores[target] and math.isfinite(float(scores[target][m])))
    # An integer sum over a count: equal rationals give equal floats, so
    # ties between methods are exact.
    mean = {m: sum(sums[target][m]) / len(sums[target][m]) for m in methods}
    score = {m: float(scores[target][m]) for m in methods}
    tau = p = float('nan')
    x = np.array([mean[m] for m in methods])
    y = np.array([score[m] if higher_is_better else -score[m]
                  for m in methods])
    if len(methods) >= 2 and np.ptp(x) > 0 and np.ptp(y) > 0:
      with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        result = stats.kendalltau(x, y)
      tau, p = float(result.statistic), float(result.pvalue)
    out[target] = {
        'kendall_tau': tau,
        'p_value': p,
        'n_methods': len(methods),
        'mean_rating': mean,
        'n_ratings': {m: len(sums[target][m]) for m in methods},
        'score': score,
    }
  return out


def _md(text: Any) -> str:
  return str(text).replace('|', '\\|').replace('\n', ' ')


def _num(value: float, digits: int) -> str:
  return 'n/a' if not math.isfinite(value) else f'{value:.{digits}f}'


def ratings_table(result: Mapping[str, Mapping[str, Any]], *,
                  digits: int = 2) -> str:
  """Markdown tables of `agreement`'s result.

  Args:
    result: the output of `agreement`.
    digits: decimals for ratings, scores, tau and p.

  Returns:
    Two markdown tables separated by a blank line: per target and method the
    number of ratings, mean rating and score (methods by mean rating,
    best first); then per target the number of methods, Kendall tau and p.
  """
  lines = ['| target | method | ratings | mean rating | score |',
           '|---|---|---:|---:|---:|']
  for target, res in result.items():
    order = sorted(res['mean_rating'],
                   key=lambda m: (-res['mean_rating'][m], m))
    for m in order:
      lines.append(
          f'| {_md(target)} | {_md(m)} | {res["n_ratings"][m]} | '
          f'{_num(res["mean_rating"][m], digits)} | '
          f'{_num(res["score"][m], digits)} |')
  lines += ['', '| target | methods | Kendall tau | p |',
            '|---|---:|---:|---:|']
  for target, res in result.items():
    lines.append(f'| {_md(target)} | {res["n_methods"]} | '
                 f'{_num(res["kendall_tau"], digits)} | '
                 f'{_num(res["p_value"], digits)} |')
  return '\n'.join(lines) + '\n'
