"""Headless Chromium through selenium, shared by the browser tests.

The review page and the report are self-contained HTML files whose behaviour
(ratings, persistence, CSV export) only a real browser can check. These
helpers start Debian's `chromium` with its `chromedriver` and never let
selenium fetch a driver from the network. Without a browser the tests skip on
a developer machine but fail when `CI=true`, so CI cannot pass by skipping.

Usage from a test under tests/ (tests/ has no __init__.py; put it on the
path as the training tests do with their helpers):

  sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))
  import browser

  driver = browser.require_browser(download_dir=tmp_path)
  try:
    driver.get(pathlib.Path(page).as_uri())
    assert not browser.console_errors(driver)
  finally:
    driver.quit()
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
import time
from typing import Any, Iterator

import pytest

# Debian/Ubuntu names first; the PATH is searched after these.
_BROWSER_PATHS = ('/usr/bin/chromium', '/usr/bin/chromium-browser')
_BROWSER_NAMES = ('chromium', 'chromium-browser', 'google-chrome',
                  'google-chrome-stable')
_DRIVER_PATHS = ('/usr/bin/chromedriver', '/usr/lib/chromium/chromedriver')
_DRIVER_NAMES = ('chromedriver',)

# Quiet, offline, reproducible: no background fetches, updates or sync, and
# /dev/shm (often tiny in containers) left alone.
CHROME_ARGS = (
    '--headless=new',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-dev-shm-usage',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
    '--no-default-browser-check',
    '--disable-extensions',
    '--window-size=1280,1024',
)


def _find(paths: tuple[str, ...], names: tuple[str, ...]) -> str | None:
  for path in paths:
    if os.path.isfile(path) and os.access(path, os.X_OK):
      return path
  for name in names:
    found = shutil.which(name)
    if found:
      return found
  return None


def find_browser() -> tuple[str | None, str | None]:
  """Returns (chromium binary, chromedriver binary); None where not found."""
  return (_find(_BROWSER_PATHS, _BROWSER_NAMES),
          _find(_DRIVER_PATHS, _DRIVER_NAMES))


def _start(download_dir: str | os.PathLike[str] | None):
  """Starts a driver; returns it with the temporary profile it owns."""
  # Imported here so that collecting a test module never needs selenium.
  # pylint: disable=g-import-not-at-top
  from selenium import webdriver
  from selenium.webdriver.chrome import service as chrome_service

  binary, driver_path = find_browser()
  if binary is None or driver_path is None:
    raise FileNotFoundError(
        f'chromium binary: {binary or "missing"}, '
        f'chromedriver: {driver_path or "missing"}')
  options = webdriver.ChromeOptions()
  options.binary_location = binary
  for arg in CHROME_ARGS:
    options.add_argument(arg)
  profile = tempfile.mkdtemp(prefix='factorecg-chrome-')
  options.add_argument(f'--user-data-dir={profile}')
  prefs: dict[str, Any] = {
      'download.prompt_for_download': False,
      'download.directory_upgrade': True,
      'safebrowsing.enabled': False,
  }
  if download_dir is not None:
    prefs['download.default_directory'] = os.fspath(
        pathlib.Path(download_dir).resolve())
  options.add_experimental_option('prefs', prefs)
  # Makes console messages readable through driver.get_log('browser').
  options.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
  # An explicit driver path keeps Selenium Manager (which downloads drivers)
  # out of the picture.
  service = chrome_service.Service(executable_path=driver_path)
  try:
    driver = webdriver.Chrome(service=service, options=options)
  except BaseException:
    shutil.rmtree(profile, ignore_errors=True)
    raise
  if download_dir is not None:
    # Headless Chromium honours the download prefs; the CDP call makes sure
    # on versions that do not. Best effort: older drivers lack it.
    with contextlib.suppress(Exception):
      driver.execute_cdp_cmd('Browser.setDownloadBehavior', {
          'behavior': 'allow',
          'downloadPath': prefs['download.default_directory'],
      })
  return driver, profile


def _quit_and_clean(driver, profile: str) -> None:
  try:
    driver.quit()
  finally:
    shutil.rmtree(profile, ignore_errors=True)


@contextlib.contextmanager
def chrome_driver(
    download_dir: str | os.PathLike[str] | None = None) -> Iterator[Any]:
  """Headless Chromium for the duration of a `with` block.

  Args:
    download_dir: where downloads land (created by the caller); None keeps
      Chromium's default.

  Yields:
    A `selenium.webdriver.Chrome` with a fresh temporary profile, console
    logging on; it is quit and the profile removed on exit.

  Raises:
    FileNotFoundError: chromium or chromedriver is not installed.
    selenium.common.exceptions.WebDriverException: the browser did not start.
  """
  driver, profile = _start(download_dir)
  try:
    yield driver
  finally:
    _quit_and_clean(driver, profile)


def _on_ci() -> bool:
  return os.environ.get('CI', '').strip().lower() == 'true'


def require_browser(download_dir: str | os.PathLike[str] | None = None):
  """Starts headless Chromium, or skips (fails on CI) the calling test.

  Args:
    download_dir: as for `chrome_driver`.

  Returns:
    A `selenium.webdriver.Chrome`; the caller must call `driver.quit()`,
    which also removes the temporary profile.
  """
  try:
    driver, profile = _start(download_dir)
  except Exception as e:  # pylint: disable=broad-except
    reason = f'headless Chromium/chromedriver not found: {e}'
    if _on_ci():
      # CI must exercise the browser tests; a skip there would hide them.
      pytest.fail(f'{reason} (CI=true: browser tests must run)',
                  pytrace=False)
    pytest.skip(reason)
  quit_ = driver.quit

  def quit_and_clean() -> None:
    try:
      quit_()
    finally:
      shutil.rmtree(profile, ignore_errors=True)

  driver.quit = quit_and_clean
  return driver


def console_messages(driver) -> list[dict[str, Any]] | None:
  """Browser console entries since the last call, or None if unsupported.

  Args:
    driver: a driver started by this module (console logging on).

  Returns:
    The entries (dicts with 'level', 'message', 'source', 'timestamp');
    reading them clears Chromium's buffer. None where the driver offers no
    `get_log` (e.g. a W3C-only driver).
  """
  get_log = getattr(driver, 'get_log', None)
  if get_log is None:
    return None
  try:
    return list(get_log('browser'))
  except Exception:  # pylint: disable=broad-except
    return None


def console_errors(driver) -> list[str]:
  """Console errors (level SEVERE) since the last call.

  Uncaught exceptions, failed loads and Content-Security-Policy violations
  all land here at that level.

  Args:
    driver: a driver started by this module.

  Returns:
    The error messages; empty if none, or if the driver cannot read the
    console (see `console_messages`).
  """
  entries = console_messages(driver) or []
  return [e.get('message', '') for e in entries
          if e.get('level') == 'SEVERE']


def wait_for_download(download_dir: str | os.PathLike[str], name: str, *,
                      timeout: float = 10.0) -> pathlib.Path:
  """Waits until Chromium has finished writing `download_dir/name`.

  Args:
    download_dir: the directory given to `chrome_driver`/`require_browser`.
    name: the file name the page downloads.
    timeout: seconds to wait.

  Returns:
    The downloaded file's path.

  Raises:
    TimeoutError: the file did not appear, complete, within `timeout`.
  """
  folder = pathlib.Path(download_dir)
  path = folder / name
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    partial = list(folder.glob('*.crdownload'))
    if path.is_file() and not partial:
      return path
    time.sleep(0.05)
  raise TimeoutError(
      f'{name} did not appear in {folder} within {timeout} s; found '
      f'{sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []}')
