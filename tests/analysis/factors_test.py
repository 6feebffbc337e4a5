"""Tests of the factor analysis: encoding, KL selection, traversals, files."""

import csv
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from factorecg_jax.analysis import factors
from factorecg_jax.data import input_pipeline
from factorecg_jax.models import vae

T, L, D = 600, 12, 4


@pytest.fixture(autouse=True, scope='module')
def _fast_compile():
  name = 'jax_disable_most_optimizations'
  old = jax.config.values[name]
  jax.config.update(name, True)
  yield
  jax.config.update(name, old)


class _ArraySource:
  """A minimal in-memory source (len + get_batch) for the eval iterator."""

  def __init__(self, n, seed=0):
    rng = np.random.default_rng(seed)
    self.beat = rng.normal(size=(n, T, L)).astype(np.float32)
    self.true = rng.uniform(size=(n, 3)).astype(np.float32)

  def __len__(self):
    return len(self.beat)

  def get_batch(self, indices):
    return {'beat': self.beat[indices], 'factors': self.true[indices]}


def _toy_encode(x):
  """mu = per-lead means of the first D leads, sd = exp(-|mu|)."""
  mu = jnp.mean(x[:, :, :D], axis=1)
  return mu, jnp.exp(-jnp.abs(mu))


def _linear_decoder(seed=0):
  """z [m, D] -> z @ W reshaped to [m, T, L]; returns (decode_fn, W)."""
  w = np.random.default_rng(seed).normal(size=(D, T * L)).astype(np.float32)

  def decode(z):
    return (np.asarray(z, np.float64) @ w).reshape(-1, T, L), None

  return decode, w


class TestEncodeDataset:

  def test_padded_batches_masked_and_traced_once(self):
    source = _ArraySource(21)
    traces = []

    def encode(x):
      traces.append(x.shape)
      return _toy_encode(x)

    batches = input_pipeline.eval_iterator(
        source, global_batch_size=8, keys=('ecg', 'factors'),
        process_index=0, process_count=1)
    out = factors.encode_dataset(encode, batches)
    # 3 batches of 8 (the last with 3 padded rows), one trace.
    assert len(traces) == 1
    assert out['mu'].shape == (21, D) and out['sd'].shape == (21, D)
    np.testing.assert_array_equal(out['index'], np.arange(21))
    np.testing.assert_array_equal(out['factors'], source.true)
    want_mu = source.beat[:, :, :D].mean(axis=1)
    np.testing.assert_allclose(out['mu'], want_mu, atol=1e-5)
    assert 'mask' not in out and 'ecg' not in out

  def test_params_argument_and_sharded_rows(self):
    devices = jax.devices()
    mesh = jax.make_mesh((len(devices),), ('data',),
                         axis_types=(jax.sharding.AxisType.Auto,))
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
    source = _ArraySource(10, seed=1)
    batches = input_pipeline.eval_iterator(
        source, global_batch_size=len(devices), process_index=0,
        process_count=1)
    scale = jnp.full((D,), 2.0)

    def encode(p, x):
      mu, sd = _toy_encode(x)
      return p * mu, sd

    out = factors.encode_dataset(encode, batches, params=scale, sharding=rows)
    np.testing.assert_allclose(
        out['mu'], 2.0 * source.beat[:, :, :D].mean(axis=1), atol=1e-5)
    assert len(out['index']) == 10

  def test_empty_raises(self):
    with pytest.raises(ValueError, match='No batches'):
      factors.encode_dataset(_toy_encode, [])
    batch = dict(ecg=np.zeros((4, T, L), np.float32), mask=np.zeros(4))
    with pytest.raises(ValueError, match='No real records'):
      factors.encode_dataset(_toy_encode, [batch])


class TestKL:

  def test_unit_sd_is_half_mu_squared(self):
    # With sd = 1 the KL to N(0, 1) is mu^2 / 2 for every record.
    mu = np.array([[0.0, 1.0, 2.0], [0.0, -1.0, 0.0]])
    kl = factors.kl_per_dim(mu, np.ones_like(mu))
    np.testing.assert_allclose(kl, [0.0, 0.5, 1.0], rtol=1e-12)

  def test_matches_monte_carlo(self):
    rng = np.random.default_rng(0)
    mu = np.array([[0.7, -0.2]])
    sd = np.array([[0.3, 1.5]])
    z = mu + sd * rng.normal(size=(400_000, 2))
    log_q = -0.5 * ((z - mu) / sd) ** 2 - np.log(sd)
    log_p = -0.5 * z ** 2
    np.testing.assert_allclose(
        factors.kl_per_dim(mu, sd), (log_q - log_p).mean(axis=0), atol=0.01)

  def test_bad_inputs(self):
    with pytest.raises(ValueError):
      factors.kl_per_dim(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError):
      factors.kl_per_dim(np.zeros((2, 3)), np.ones((2, 4)))

  def test_active_factors_strictly_above_threshold_sorted(self):
    kl = np.array([0.5, 0.001, 2.0, 0.02, 0.01, 0.5])
    active = factors.active_factors(kl, 0.01)
    # 0.01 is not above 0.01; ties (dims 0 and 5) keep index order.
    np.testing.assert_array_equal(active, [2, 0, 5, 3])
    assert factors.active_factors(kl, 5.0).shape == (0,)


class TestTraversals:

  def test_population_traversal_linear_decoder(self):
    decode, w = _linear_decoder()
    rng = np.random.default_rng(2)
    spread = np.array([0.5, 2.0, 0.0, 1.0])
    mu = rng.normal(size=(5000, D)) * spread + np.array([1.0, 0, 0, -1])
    sds = (-3.0, 0.0, 2.0)
    out = factors.population_traversal(decode, mu, [1, 3], sds)
    assert out.shape == (2, 3, T, L) and out.dtype == np.float32
    center = mu.mean(axis=0)
    for i, d in enumerate([1, 3]):
      for j, k in enumerate(sds):
        z = center.copy()
        z[d] += k * mu[:, d].std()
        np.testing.assert_allclose(
            out[i, j], (z @ w).reshape(T, L), rtol=1e-4, atol=1e-4)
    # Prior units: moved by exactly k.
    prior = factors.population_traversal(decode, mu, [1], sds, scale=1.0)
    np.testing.assert_allclose(
        prior[0, 2] - prior[0, 1], (2.0 * w[1]).reshape(T, L), atol=1e-4)

  def test_individual_traversal_moves_one_factor(self):
    decode, w = _linear_decoder(1)
    z0 = np.array([0.3, -1.0, 0.5, 2.0])
    scale = np.array([1.0, 0.5, 3.0, 1.0])
    out = factors.individual_traversal(decode, z0, [2], (-1.0, 0.0, 1.0),
                                       scale)
    np.testing.assert_allclose(out[0, 1], (z0 @ w).reshape(T, L), atol=1e-4)
    np.testing.assert_allclose(out[0, 2] - out[0, 1],
                               (3.0 * w[2]).reshape(T, L), atol=1e-4)
    with pytest.raises(ValueError):
      factors.individual_traversal(decode, z0, [D], (0.0,))

  def test_zero_sd_equals_decoding_the_mean_tiny_vae(self):
    model = vae._TinyVAE()  # pylint: disable=protected-access
    params = model.init(
        {'params': jax.random.key(0), 'sample': jax.random.key(1)},
        jnp.zeros((1, T, L)))['params']

    @jax.jit
    def decode(p, z):
      return model.apply({'params': p}, z, method='decode')

    decode_fn = functools.partial(decode, params)
    mu = np.random.default_rng(3).normal(size=(50, 4)).astype(np.float32)
    sds = (-3.0, -1.0, 0.0, 1.0, 3.0)
    out = factors.population_traversal(decode_fn, mu, [0, 1, 2, 3], sds)
    assert out.shape == (4, 5, T, L)
    mean_beat = np.asarray(decode_fn(mu.mean(axis=0, keepdims=True))[0])[0]
    for i in range(4):
      np.testing.assert_allclose(out[i, 2], mean_beat, atol=1e-5)
      # Moving a factor changes the decoded beat.
      assert np.abs(out[i, 0] - out[i, 4]).max() > 1e-4
    single = factors.individual_traversal(decode_fn, mu[7], [1], sds)
    np.testing.assert_allclose(
        single[0, 2], np.asarray(decode_fn(mu[7:8])[0])[0], atol=1e-5)


class TestFiles:

  def _data(self, ids):
    rng = np.random.default_rng(0)
    return dict(mu=rng.normal(size=(5, 3)).astype(np.float32),
                sd=rng.uniform(0.1, 1, size=(5, 3)).astype(np.float32),
                ids=ids, index=np.arange(5),
                factors=rng.uniform(size=(5, 2)),
                labels=rng.uniform(size=(5, 2)) > 0.5,
                active_factors=np.array([2, 0]), step=7)

  @pytest.mark.parametrize('ids', [np.arange(10, 15),
                                   np.array(['a1', 'b22', 'c', 'd', 'e'],
                                            dtype=object)])
  def test_npz_round_trip_with_ids(self, tmp_path, ids):
    data = self._data(ids)
    path = factors.save_factors(str(tmp_path / 'sub' / 'f'), data)
    assert path.endswith('.npz')
    back = factors.load_factors(path)
    assert set(back) == set(data)
    for key, value in data.items():
      value = np.asarray(value)
      if value.dtype == object:
        value = value.astype(str)
      assert back[key].dtype == value.dtype, key
      np.testing.assert_array_equal(back[key], value)
    assert back['mu'].dtype == np.float32 and int(back['step']) == 7

  def test_table_and_csv(self, tmp_path):
    data = self._data(np.array([4, 3, 2, 1, 0]))
    table = factors.factors_table(data, dims=[2, 0],
                                  factor_names=['hr', 'qrs_dur'],
                                  label_names=['lbbb', 'rbbb'])
    assert list(table) == ['id', 'mu_02', 'mu_00', 'sd_02', 'sd_00',
                           'true_hr', 'true_qrs_dur', 'label_lbbb',
                           'label_rbbb']
    path = factors.write_csv(str(tmp_path / 'f.csv'), table)
    with open(path, newline='') as f:
      rows = list(csv.DictReader(f))
    assert len(rows) == 5
    assert [int(r['id']) for r in rows] == [4, 3, 2, 1, 0]
    np.testing.assert_allclose([float(r['mu_02']) for r in rows],
                               data['mu'][:, 2], rtol=1e-6)
    assert {r['label_rbbb'] for r in rows} <= {'0', '1'}
    with pytest.raises(ValueError, match='length'):
      factors.write_csv(str(tmp_path / 'g.csv'), {'a': [1, 2], 'b': [1]})
