"""Tests for the blinded heatmap review kit (page, key, ratings, agreement).

The page tests drive headless Chromium (tests/browser.py): they rate every
item, reload, export and read the CSV back. They skip without a browser on a
developer machine and fail on CI.
"""

import csv
import html
import io
import json
import math
import os
import pathlib
import re
import sys

import matplotlib

matplotlib.use('Agg')

# pylint: disable=g-import-not-at-top,wrong-import-position
from matplotlib import figure as mfigure
import numpy as np
import pytest

from factorecg_jax.explain import review

# tests/ has no __init__.py: put it on the path for the shared helper.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
import browser  # pylint: disable=import-error
# pylint: enable=g-import-not-at-top,wrong-import-position

METHODS = ('integrated_gradients', 'gradcam', 'saliency')
EVIL_ID = '</script><script>alert(1)</script>"\'&<b>x</b>'
RECORDS = ('rec-0001', EVIL_ID)
TARGETS = ('qrs_ms', 'qt_ms')
# The ratings the test gives: the methods' order the qrs scores also give.
RATING_BY_METHOD = {'gradcam': 5, 'integrated_gradients': 3, 'saliency': 1}
SCORES = {
    'qrs_ms': {'gradcam': 0.9, 'integrated_gradients': 0.5, 'saliency': 0.1},
    # Reversed: lower is better here, or tau = -1 with higher_is_better.
    'qt_ms': {'gradcam': 0.1, 'integrated_gradients': 0.4, 'saliency': 0.8},
}


def _png(seed: int) -> bytes:
  """A tiny heatmap-like figure, with a method-naming PNG text chunk."""
  rng = np.random.default_rng(seed)
  fig = mfigure.Figure(figsize=(2.0, 0.8), dpi=50)
  ax = fig.add_subplot()
  t = np.linspace(0, 1, 100)
  ax.plot(t, np.sin(12 * t) + 0.1 * rng.normal(size=t.size), 'k', lw=0.8)
  ax.imshow(rng.random((1, 20)), aspect='auto', extent=(0, 1, -1.5, 1.5),
            alpha=0.5, cmap='Reds')
  ax.set_axis_off()
  buf = io.BytesIO()
  # A careless caller's metadata: the page must strip it.
  fig.savefig(buf, format='png', metadata={'Title': METHODS[seed % 3]})
  return buf.getvalue()


def _items() -> list[review.ReviewItem]:
  items = []
  k = 0
  for record in RECORDS:
    for target in TARGETS:
      if record == EVIL_ID and target == 'qt_ms':
        continue  # 9 items: not a full grid
      for method in METHODS:
        items.append(review.ReviewItem(
            record_id=record, target=target, method=method, png=_png(k),
            caption=f'predicted {target}: {100 + k} ms <ok> & "fine"',
            details=(('age', '61'),)))
        k += 1
  return items


@pytest.fixture(scope='module')
def page(tmp_path_factory) -> review.ReviewPage:
  out = tmp_path_factory.mktemp('review')
  return review.write_review_page(out, _items(), title='Test review', seed=3)


def _key(page: review.ReviewPage) -> dict:
  return json.loads(page.key.read_text(encoding='utf-8'))


# --- The page as text: blind, offline, escaped. -----------------------------


def test_page_is_blind_offline_and_escaped(page):
  text = page.html.read_text(encoding='utf-8')
  lower = text.lower()
  for method in METHODS:
    for spelling in (method, method.replace('_', ' '),
                     method.replace('_', '-'), method.replace('_', '')):
      assert spelling not in lower, spelling
  # Nothing from the network, not even a link; the key is not referenced.
  assert 'http://' not in lower and 'https://' not in lower
  # Attributes of the markup (the code's only link is the export's blob:).
  refs = re.findall(r'\s(?:src|href|action|srcset|poster)\s*=\s*["\']?'
                    r'([^"\'\s>]*)', text, flags=re.IGNORECASE)
  assert len(refs) == 10 and all(r.startswith('data:') for r in refs), [
      r[:30] for r in refs]
  styles = ''.join(re.findall(r'<style>(.*?)</style>', text, flags=re.S))
  assert styles and not re.search(r'url\(|@import|@font-face', styles)
  assert not re.search(r'<(?:iframe|object|embed|base|form)\b', lower)
  assert 'review_key' not in text
  # Images embedded, one per item, PNG text chunks gone.
  uris = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
  assert len(uris) == 9
  # The injected record id only ever appears escaped.
  assert EVIL_ID not in text
  assert '<script>alert(1)' not in text
  assert html.escape(EVIL_ID) in text
  assert text.count('<script') == 2  # the JSON block and the code
  assert 'predicted qrs_ms: 100 ms &lt;ok&gt; &amp; &quot;fine&quot;' in text


def test_png_text_chunks_stripped(page):
  text = page.html.read_text(encoding='utf-8')
  import base64  # pylint: disable=g-import-not-at-top
  for uri in re.findall(r'src="data:image/png;base64,([^"]+)"', text):
    png = base64.b64decode(uri)
    assert png.startswith(b'\x89PNG')
    for chunk in (b'tEXt', b'iTXt', b'zTXt'):
      assert chunk not in png


def test_json_block_cannot_break_out():
  encoded = review._json_for_script({'id': EVIL_ID, 'x': '<!-- \u2028'})
  assert '</' not in encoded and '<!--' not in encoded and '<' not in encoded
  assert '\u2028' not in encoded
  assert json.loads(encoded) == {'id': EVIL_ID, 'x': '<!-- \u2028'}


def test_key_maps_every_item_and_order_is_seeded(page, tmp_path):
  key = _key(page)
  assert key['page_id'] == page.page_id
  assert list(key['items']) == list(page.item_ids)
  assert len(page.item_ids) == 9 == len(set(page.item_ids))
  triples = {(e['record_id'], e['target'], e['method'])
             for e in key['items'].values()}
  assert triples == {(i.record_id, i.target, i.method) for i in _items()}
  assert [e['position'] for e in key['items'].values()] == list(range(1, 10))
  # The display order is a seeded shuffle: the same seed, the same order.
  again = review.write_review_page(tmp_path / 'a', _items(),
                                   title='Test review', seed=3)
  assert _key(again)['items'] == key['items']
  assert again.page_id == page.page_id
  other = review.write_review_page(tmp_path / 'b', _items(),
                                   title='Test review', seed=4)
  order = lambda k: [(e['record_id'], e['target'], e['method'])
                     for e in k['items'].values()]
  assert order(_key(other)) != order(key)
  assert other.page_id != page.page_id  # no localStorage clash
  given = [(i.record_id, i.target, i.method) for i in _items()]
  assert order(key) != given  # shuffled, not the input order
  expected = [given[j] for j in np.random.default_rng(3).permutation(9)]
  assert order(key) == expected


def test_page_refuses_text_naming_a_method(tmp_path):
  items = _items()
  items[0] = review.ReviewItem(items[0].record_id, items[0].target,
                               items[0].method, items[0].png,
                               caption='heatmap by Integrated-Gradients')
  with pytest.raises(ValueError, match='names the method'):
    review.write_review_page(tmp_path, items)
  with pytest.raises(ValueError, match='names the method'):
    review.write_review_page(tmp_path, _items(), title='GradCAM review')
  # A method called like a word of the page itself cannot be blinded.
  word = review.ReviewItem('r', 't', 'rating', _png(0))
  with pytest.raises(ValueError, match='template'):
    review.write_review_page(tmp_path, [word])


def test_page_refuses_bad_items(tmp_path):
  with pytest.raises(ValueError, match='empty'):
    review.write_review_page(tmp_path, [])
  with pytest.raises(ValueError, match='not PNG'):
    review.write_review_page(
        tmp_path, [review.ReviewItem('r', 't', 'gradcam', b'GIF89a')])
  item = review.ReviewItem('r', 't', 'gradcam', _png(0))
  with pytest.raises(ValueError, match='repeats'):
    review.write_review_page(tmp_path, [item, item])


# --- Ratings: loading, validation, unblinding, agreement. -------------------


def _write_csv(path: pathlib.Path, rows, columns=review.CSV_COLUMNS):
  with path.open('w', newline='', encoding='utf-8') as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    writer.writerows(rows)
  return path


def _rows_for(page, rater, rating_of=None):
  key = _key(page)['items']
  rows = []
  for item_id, e in key.items():
    r = RATING_BY_METHOD[e['method']] if rating_of is None else rating_of(e)
    rows.append([item_id, e['record_id'], e['target'], r, 'c', rater,
                 '2026-01-01T00:00:00Z'])
  return rows


def test_load_ratings_combines_raters(page, tmp_path):
  a = _write_csv(tmp_path / 'a.csv', _rows_for(page, 'Dr A'))
  b_rows = _rows_for(page, 'Dr B', rating_of=lambda e: 2)
  b_rows[0][3] = ''  # skipped by the rater: left out
  b = _write_csv(tmp_path / 'b.csv', b_rows)
  rows = review.load_ratings([a, b], key=page.key)
  assert len(rows) == 17
  assert {r['rater'] for r in rows} == {'Dr A', 'Dr B'}
  assert all(isinstance(r['rating'], int) for r in rows)
  assert rows[0]['source'] == str(a)
  assert set(review.CSV_COLUMNS) <= set(rows[0])
  unblinded = review.unblind(rows, page.key)
  assert {r['method'] for r in unblinded} == set(METHODS)
  assert all('method' not in r for r in rows)  # copies, inputs untouched


@pytest.mark.parametrize('bad, match', [
    ('0', 'not an integer in 1..5'),
    ('6', 'not an integer in 1..5'),
    ('3.5', 'not an integer in 1..5'),
    ('good', 'not an integer in 1..5'),
])
def test_load_ratings_rejects_bad_rating(page, tmp_path, bad, match):
  rows = _rows_for(page, 'Dr A')
  rows[4][3] = bad
  path = _write_csv(tmp_path / 'r.csv', rows)
  with pytest.raises(ValueError, match=match) as e:
    review.load_ratings(path)
  assert 'r.csv:6' in str(e.value)  # file and line of the bad row


def test_load_ratings_rejects_unknown_and_mismatched_items(page, tmp_path):
  rows = _rows_for(page, 'Dr A')
  rows[2][0] = 'ffffffffffff-002'
  path = _write_csv(tmp_path / 'r.csv', rows)
  assert len(review.load_ratings(path)) == 9  # without a key: unchecked
  with pytest.raises(ValueError, match='unknown item id'):
    review.load_ratings(path, key=page.key)
  with pytest.raises(ValueError, match='not in the key'):
    review.unblind(review.load_ratings(path), page.key)
  rows = _rows_for(page, 'Dr A')
  rows[1][2] = 'pr_ms'
  path = _write_csv(tmp_path / 's.csv', rows)
  with pytest.raises(ValueError, match='target .* differs from the key'):
    review.load_ratings(path, key=_key(page))


def test_load_ratings_rejects_bad_files(page, tmp_path):
  path = _write_csv(tmp_path / 'm.csv', [['x', 3]], columns=('item_id',
                                                               'rating'))
  with pytest.raises(ValueError, match='missing column.*record_id'):
    review.load_ratings(path)
  rows = _rows_for(page, 'Dr A')
  rows[0][0] = ' '
  with pytest.raises(ValueError, match='empty item_id'):
    review.load_ratings(_write_csv(tmp_path / 'e.csv', rows))
  a = _write_csv(tmp_path / 'a.csv', _rows_for(page, 'Dr A'))
  with pytest.raises(ValueError, match="rater 'Dr A' rated item"):
    review.load_ratings([a, a])
  with pytest.raises(ValueError, match='no CSV'):
    review.load_ratings([])


def test_agreement_kendall_tau(page, tmp_path):
  a = _write_csv(tmp_path / 'a.csv', _rows_for(page, 'Dr A'))
  rows = review.unblind(review.load_ratings(a, key=page.key), page.key)
  result = review.agreement(rows, SCORES)
  assert sorted(result) == ['qrs_ms', 'qt_ms']
  qrs = result['qrs_ms']
  assert qrs['n_methods'] == 3
  assert qrs['kendall_tau'] == pytest.approx(1.0, abs=1e-12)
  # Exact test, n = 3, tau = 1: two of the 3! orders are as extreme.
  assert qrs['p_value'] == pytest.approx(1 / 3, abs=1e-9)
  assert qrs['mean_rating'] == {'gradcam': 5.0, 'integrated_gradients': 3.0,
                                'saliency': 1.0}
  assert qrs['n_ratings'] == {'gradcam': 2, 'integrated_gradients': 2,
                              'saliency': 2}
  assert result['qt_ms']['kendall_tau'] == pytest.approx(-1.0, abs=1e-12)
  flipped = review.agreement(rows, SCORES, higher_is_better=False)
  assert flipped['qt_ms']['kendall_tau'] == pytest.approx(1.0, abs=1e-12)
  assert flipped['qrs_ms']['kendall_tau'] == pytest.approx(-1.0, abs=1e-12)
  # Partial agreement: one swapped pair of three, tau = 1/3.
  partial = {'qrs_ms': {'gradcam': 0.9, 'integrated_gradients': 0.1,
                        'saliency': 0.5}}
  tau = review.agreement(rows, partial)['qrs_ms']['kendall_tau']
  assert tau == pytest.approx(1 / 3, abs=1e-12)
  # A method without a score is left out; constant ratings give NaN.
  two = review.agreement(rows, {'qrs_ms': {'gradcam': 1.0,
                                           'saliency': float('nan')}})
  assert two['qrs_ms']['n_methods'] == 1
  assert math.isnan(two['qrs_ms']['kendall_tau'])
  with pytest.raises(ValueError, match='no target'):
    review.agreement(rows, {'pr_ms': {'gradcam': 1.0}})
  table = review.ratings_table(result)
  assert '| qrs_ms | gradcam | 2 | 5.00 | 0.90 |' in table
  assert '| qrs_ms | 3 | 1.00 | 0.33 |' in table
  assert '| qt_ms | 3 | -1.00 | 0.33 |' in table


# --- The page in a browser. -------------------------------------------------


def test_page_in_headless_chromium(page, tmp_path):
  downloads = tmp_path / 'downloads'
  downloads.mkdir()
  # First, so that a machine without selenium skips (or fails on CI) here.
  driver = browser.require_browser(download_dir=downloads)
  try:
    # pylint: disable=g-import-not-at-top
    from selenium.common import exceptions
    from selenium.webdriver.common import by
    from selenium.webdriver.support import ui
    # pylint: enable=g-import-not-at-top
    css = by.By.CSS_SELECTOR
    driver.set_page_load_timeout(20)
    wait = ui.WebDriverWait(driver, 10)
    ready = lambda d: d.find_element(css, 'body').get_attribute(
        'data-ready') == 'true'
    driver.get(page.html.as_uri())
    wait.until(ready)
    assert browser.console_errors(driver) == []

    # Every image decoded; the injected id shows as text, no script ran.
    widths = driver.execute_script(
        'return Array.from(document.images).map(i => i.naturalWidth);')
    assert len(widths) == 9 and all(w > 0 for w in widths), widths
    shown = [e.text for e in driver.find_elements(css, '.meta dd')]
    assert EVIL_ID in shown
    with pytest.raises(exceptions.NoAlertPresentException):
      driver.switch_to.alert  # pylint: disable=pointless-statement
    assert driver.find_element(css, '#progress').text == '0 of 9 rated'

    key = _key(page)['items']
    driver.find_element(css, '#rater').send_keys('Dr Test')
    for n, (item_id, e) in enumerate(key.items()):
      r = RATING_BY_METHOD[e['method']]
      driver.find_element(css, f'#rating-{item_id}-{r}').click()
      if n == 0:
        driver.find_element(css, f'#comment-{item_id}').send_keys(
            'QRS, "onset" early, <ok>')
    assert driver.find_element(css, '#progress').text == '9 of 9 rated'

    # Ratings, comment and rater survive a reload.
    driver.refresh()
    wait.until(ready)
    assert driver.find_element(css, '#progress').text == '9 of 9 rated'
    assert driver.find_element(css, '#rater').get_attribute(
        'value') == 'Dr Test'
    for item_id, e in key.items():
      r = RATING_BY_METHOD[e['method']]
      assert driver.find_element(css, f'#rating-{item_id}-{r}').is_selected()
    first = next(iter(key))
    assert driver.find_element(css, f'#comment-{first}').get_attribute(
        'value') == 'QRS, "onset" early, <ok>'

    driver.find_element(css, '#export-csv').click()
    exported = browser.wait_for_download(downloads, review.CSV_NAME)
    box = driver.find_element(css, '#csv-output').get_attribute('value')
    assert browser.console_errors(driver) == []
  finally:
    driver.quit()

  text = exported.read_text(encoding='utf-8')
  assert text.replace('\r\n', '\n') == box.replace('\r\n', '\n')
  table = list(csv.DictReader(io.StringIO(text, newline='')))
  assert [r['item_id'] for r in table] == list(page.item_ids)
  for row in table:
    e = key[row['item_id']]
    assert row['record_id'] == e['record_id']
    assert row['target'] == e['target']
    assert int(row['rating']) == RATING_BY_METHOD[e['method']]
    assert row['rater'] == 'Dr Test'
    assert re.fullmatch(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z',
                        row['timestamp'])
  assert table[0]['comment'] == 'QRS, "onset" early, <ok>'
  assert EVIL_ID in {r['record_id'] for r in table}

  rows = review.unblind(review.load_ratings(exported, key=page.key), page.key)
  assert len(rows) == 9
  result = review.agreement(rows, SCORES)
  assert result['qrs_ms']['kendall_tau'] == pytest.approx(1.0, abs=1e-12)
  assert result['qt_ms']['kendall_tau'] == pytest.approx(-1.0, abs=1e-12)
