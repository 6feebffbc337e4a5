"""Test-wide setup: eight forced CPU devices, set before JAX is imported."""

import os

# Multi-device code paths are tested on CPU; this must precede `import jax`.
os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '')
    + ' --xla_force_host_platform_device_count=8'
).strip()
os.environ.setdefault('MPLBACKEND', 'Agg')


import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(scope='module')
def fast_compile():
  """Turns XLA optimisation passes off for one test module, then restores.

  Compiling dominates the tests that use it; their arrays are tiny. Use with
  `pytestmark = pytest.mark.usefixtures('fast_compile')` (whole module) or
  `@pytest.mark.usefixtures('fast_compile')` on a class (from its first test
  to the end of the module).
  """
  import jax  # pylint: disable=g-import-not-at-top
  name = 'jax_disable_most_optimizations'
  saved = jax.config.read(name)
  jax.config.update(name, True)
  yield
  jax.config.update(name, saved)


# The longest modules (a minute or more each, measured in the suite on 2
# cores), longest first, so that pytest-xdist's loadfile scheduling starts
# them early on both workers and the many short modules fill in around them
# instead of one long module starting last. `make test` passes
# --no-loadscope-reorder: since xdist 3.5 loadfile reorders modules by test
# count (3.8 added the switch).
_SLOW_FIRST = ('tests/demo_test.py', 'tests/stages/pipeline_test.py',
               'tests/stages/explain_trained_test.py', 'tests/sweeps_test.py',
               'tests/data/simulator_test.py', 'tests/main_test.py',
               'tests/data/median_beat_test.py',
               'tests/explain/methods_test.py',
               'tests/training/resume_resnet_test.py',
               'tests/training/train_test.py',
               'tests/training/classify_simulated_test.py')


def pytest_collection_modifyitems(session, config, items):
  del session, config

  def rank(item):
    path = item.nodeid.split('::')[0]
    return _SLOW_FIRST.index(path) if path in _SLOW_FIRST else len(
        _SLOW_FIRST)

  items.sort(key=rank)  # stable: the order within a module is kept
