"""Tests for the 1-D ResNet (shapes, parameter counts, methods, BN, options)."""

import functools
import math

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from factorecg_jax import models
from factorecg_jax.models import resnet

LEADS, OUTPUTS = 12, 3
BEAT, STRIP = 600, 5000


def _ecg(length=BEAT, batch=2, seed=0):
  return jnp.asarray(
      np.random.default_rng(seed).normal(size=(batch, length, LEADS)),
      jnp.float32,
  )


def _shapes(model, length, *args):
  """Variables of `model` as ShapeDtypeStructs; no initialiser is run."""
  x = jax.ShapeDtypeStruct((1, length, LEADS), jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), x, *args)


def _size(tree):
  return sum(int(np.prod(s.shape)) for s in jax.tree.leaves(tree))


def _resnet_count(
    outputs, stem, filters, kernel, downsample, length, *, skip_pool=True,
    batchnorm=True, pool='flatten', extra=0,
):
  """(params, batch_stats) sizes, counted by hand from the layer shapes."""
  conv = lambda i, o, k: i * o * k + (0 if batchnorm else o)  # noqa: E731
  norm = lambda c: 2 * c if batchnorm else 0  # noqa: E731
  params = conv(LEADS, stem, kernel) + norm(stem)
  stats = norm(stem)
  cin, t = stem, length
  for c, d in zip(filters, downsample):
    params += conv(cin, c, kernel) + conv(c, c, kernel) + 2 * norm(c)
    stats += 2 * norm(c)
    if cin != c or (not skip_pool and d > 1):
      params += cin * c  # 1x1 skip convolution, no bias.
    cin, t = c, math.ceil(t / d)
  pooled = (t * cin if pool == 'flatten' else cin) + extra
  return params + pooled * outputs + outputs, stats


def _leaky(x):
  return jnp.where(x > 0, x, 0.1 * x)


def _identity(x):
  return x


# XLA optimisation passes off for this module (tests/conftest.py).
pytestmark = pytest.mark.usefixtures('fast_compile')


class ShapesTest(parameterized.TestCase):

  def test_registry(self):
    self.assertIs(models.MODELS['resnet'], resnet.ResNet)
    self.assertIs(models.MODELS['resnet_ribeiro'], resnet.ResNetRibeiro)
    self.assertIs(models.MODELS['resnet_cpu'], resnet.ResNetCPU)

  @parameterized.named_parameters(('beat', BEAT), ('strip', STRIP))
  def test_shapes(self, length):
    model = resnet._TinyResNet(num_outputs=OUTPUTS)
    x = _ecg(length)
    variables = jax.jit(model.init)(jax.random.key(0), x)
    out, aux = jax.jit(model.apply)(variables, x)
    self.assertEqual(out.shape, (2, OUTPUTS))
    self.assertEqual(out.dtype, jnp.float32)
    self.assertTrue(np.all(np.isfinite(out)))
    self.assertEqual(
        set(aux), {'stem', 'block1', 'block2', 'features', 'pre_logits'}
    )
    t1, t2 = math.ceil(length / 4), math.ceil(length / 16)
    self.assertEqual(aux['stem'].shape, (2, length, 4))
    self.assertEqual(aux['block1'].shape, (2, t1, 8))
    self.assertEqual(aux['block2'].shape, (2, t2, 8))
    self.assertEqual(aux['features'].shape, (2, t2, 8))
    np.testing.assert_array_equal(aux['features'], aux['block2'])
    # Flattened time-major: pre_logits[:, t * C + c] = features[:, t, c].
    self.assertEqual(aux['pre_logits'].shape, (2, t2 * 8))
    np.testing.assert_array_equal(
        aux['pre_logits'][:, 8 * 5 + 3], aux['features'][:, 5, 3]
    )

  @parameterized.parameters(37, 601, 4096)
  def test_any_length(self, length):
    """Lengths that do not divide give ceil(t / prod(downsample)) steps."""
    model = resnet.ResNetRibeiro(num_outputs=OUTPUTS)
    x = jax.ShapeDtypeStruct((2, length, LEADS), jnp.float32)
    variables = _shapes(model, length)
    out, aux = jax.eval_shape(model.apply, variables, x)
    self.assertEqual(out.shape, (2, OUTPUTS))
    for i, c in enumerate((128, 196, 256, 320)):
      t = math.ceil(length / 4 ** (i + 1))
      self.assertEqual(aux[f'block{i + 1}'].shape, (2, t, c))
    self.assertEqual(
        aux['features'].shape, (2, math.ceil(length / 256), 320)
    )

  def test_mismatched_downsample_raises(self):
    with self.assertRaisesRegex(ValueError, 'same length'):
      _shapes(resnet._TinyResNet(num_outputs=1, downsample=(4,)), BEAT)

  def test_bad_pool_raises(self):
    with self.assertRaisesRegex(ValueError, 'pool'):
      _shapes(resnet._TinyResNet(num_outputs=1, pool='max'), BEAT)


class PadSameTest(parameterized.TestCase):
  """Explicit padding + `conv1d` / `max_pool` equal XLA's 'SAME' window ops.

  Values and both derivatives (reverse and forward mode): the folded
  strided convolution and the reshape max-pool are other ways of computing
  the same functions as `lax.conv_general_dilated` and `lax.reduce_window`.
  """

  @parameterized.parameters(
      (600, 17, 1), (601, 17, 4), (10, 5, 4), (9, 17, 4), (38, 1, 4),
      (37, 3, 4), (50, 4, 2), (23, 17, 3), (40, 2, 4), (10, 17, 1),
  )
  def test_conv_matches_same(self, length, kernel, stride):
    rng = np.random.default_rng(length)
    x = jnp.asarray(rng.normal(size=(2, length, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kernel, 3, 5)), jnp.float32)
    ours = lambda x, w: resnet.conv1d(  # noqa: E731
        resnet._pad_same(x, kernel, stride), w, stride
    )
    ref = lambda x, w: jax.lax.conv_general_dilated(  # noqa: E731
        x, w, (stride,), 'SAME', dimension_numbers=('NWC', 'WIO', 'NWC')
    )
    self.assertEqual(ours(x, w).shape[1], math.ceil(length / stride))
    np.testing.assert_allclose(ours(x, w), ref(x, w), atol=1e-4, rtol=1e-5)
    cotangent = jnp.asarray(
        rng.normal(size=ref(x, w).shape), jnp.float32
    )
    for got, want in zip(
        jax.vjp(ours, x, w)[1](cotangent), jax.vjp(ref, x, w)[1](cotangent)
    ):
      np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5)
    # Batched cotangents (the explanation methods vmap the VJP over targets).
    cotangents = jnp.stack([cotangent, -2 * cotangent])
    got = jax.vmap(jax.vjp(ours, x, w)[1])(cotangents)
    want = jax.vmap(jax.vjp(ref, x, w)[1])(cotangents)
    jax.tree.map(
        functools.partial(np.testing.assert_allclose, atol=1e-4, rtol=1e-5),
        got, want,
    )

  @parameterized.parameters((600, 4), (601, 4), (150, 4), (10, 4), (9, 2))
  def test_max_pool_matches_same(self, length, d):
    # Rounded to one decimal after a ReLU: many ties, zeros above all.
    x = jnp.round(jax.nn.relu(_ecg(length)) * 10) / 10
    ours = lambda x: resnet.max_pool(  # noqa: E731
        resnet._pad_same(x, d, d, -jnp.inf), d
    )
    ref = lambda x: jax.lax.reduce_window(  # noqa: E731
        x, -jnp.inf, jax.lax.max, (1, d, 1), (1, d, 1), 'SAME'
    )
    np.testing.assert_array_equal(ours(x), ref(x))
    rng = np.random.default_rng(d)
    cotangent = jnp.asarray(rng.normal(size=ref(x).shape), jnp.float32)
    np.testing.assert_array_equal(
        jax.vjp(ours, x)[1](cotangent)[0], jax.vjp(ref, x)[1](cotangent)[0]
    )
    tangent = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    np.testing.assert_array_equal(
        jax.jvp(ours, (x,), (tangent,))[1], jax.jvp(ref, (x,), (tangent,))[1]
    )

  @staticmethod
  def _reversed_convolutions(fn, *args):
    """Convolutions that XLA:CPU rewrote to its slow short-signal form.

    A convolution with window padding on an input shorter than its kernel
    comes out of XLA's optimiser with the operands swapped and the kernel
    reversed (`rhs_reversal=1`, `dim_labels=0fb_o0i->f0b`): the ~100x slow
    case that `_pad_time` / `_conv_valid` avoid. Returns those HLO lines of
    `jax.jit(fn)`, compiled and not run.
    """
    hlo = jax.jit(fn).lower(*args).compile().as_text()
    return [
        line.strip() for line in hlo.splitlines()
        if 'convolution(' in line and 'rhs_reversal=1' in line
    ]

  def test_no_slow_convolution_on_a_median_beat(self):
    # On a median beat the last block convolves 10 samples with 17 taps.
    model = resnet.ResNetRibeiro(num_outputs=2)
    variables = model.init(jax.random.key(0), _ecg(BEAT, batch=1))
    grad = jax.grad(lambda v, x: model.apply(v, x)[0].sum(), argnums=(0, 1))
    self.assertEqual(
        self._reversed_convolutions(grad, variables, _ecg(BEAT, batch=4)), []
    )
    # Control: XLA's own padded convolution at those sizes is rewritten. If
    # this fails, a new XLA no longer does so and the guard may be obsolete.
    plain = lambda x, w: jax.lax.conv_general_dilated(  # noqa: E731
        x, w, (1,), [(8, 8)], dimension_numbers=('NWC', 'WIO', 'NWC'))
    self.assertLen(
        self._reversed_convolutions(
            plain,
            jax.ShapeDtypeStruct((4, 10, 256), jnp.float32),
            jax.ShapeDtypeStruct((17, 256, 320), jnp.float32),
        ),
        1,
    )

  def test_conv_params_match_flax_conv(self):
    """Same parameter tree and initial values as `nn.Conv`, bias included."""
    x = _ecg(40)
    ours = resnet._Conv(6, 5, stride=4, use_bias=True)
    ref = nn.Conv(
        6, (5,), strides=(4,), padding='VALID',
        kernel_init=resnet._kernel_init,
    )
    key = jax.random.key(3)
    v_ours, v_ref = ours.init(key, x), ref.init(key, x)
    jax.tree.map(np.testing.assert_array_equal, v_ours, v_ref)
    v = {'params': {'kernel': v_ref['params']['kernel'], 'bias': jnp.ones(6)}}
    np.testing.assert_allclose(
        ours.apply(v, x), ref.apply(v, x), atol=1e-5, rtol=1e-5
    )


class ParamCountTest(parameterized.TestCase):

  def test_published_preset(self):
    variables = _shapes(resnet.ResNetRibeiro(num_outputs=6), STRIP)
    params, stats = _resnet_count(
        6, 64, (128, 196, 256, 320), 17, (4, 4, 4, 4), STRIP
    )
    self.assertEqual(_size(variables['params']), params)
    self.assertEqual(_size(variables['batch_stats']), stats)
    # 5000 / 4**4 -> 20 steps of 320 channels feed the head.
    self.assertEqual(
        variables['params']['classifier']['kernel'].shape, (20 * 320, 6)
    )
    self.assertBetween(params, 6.8e6, 6.9e6)
    for leaf in jax.tree.leaves(variables):
      self.assertEqual(leaf.dtype, jnp.float32)

  @parameterized.named_parameters(
      ('cpu', resnet.ResNetCPU, 16, (32, 48, 64, 80), 9, (4, 4, 4, 4), {}),
      ('tiny', resnet._TinyResNet, 4, (8, 8), 5, (4, 4), {}),
      ('tiny_strided_skip', resnet._TinyResNet, 4, (8, 8), 5, (4, 4),
       dict(skip_pool=False)),
      ('tiny_no_bn', resnet._TinyResNet, 4, (8, 8), 5, (4, 4),
       dict(use_batchnorm=False)),
      ('tiny_avg_extra', resnet._TinyResNet, 4, (8, 8), 5, (4, 4),
       dict(pool='avg', num_extra=2)),
      # Block 2 keeps shape: an identity skip even when strided skips.
      ('tiny_unit_downsample', resnet._TinyResNet, 4, (8, 8), 5, (4, 1),
       dict(skip_pool=False, downsample=(4, 1))),
  )
  def test_presets_and_options(
      self, preset, stem, filters, kernel, downsample, kwargs
  ):
    model = preset(num_outputs=OUTPUTS, **kwargs)
    extra = kwargs.get('num_extra', 0)
    if extra:
      e = jax.ShapeDtypeStruct((1, extra), jnp.float32)
      variables = _shapes(model, BEAT, e)
    else:
      variables = _shapes(model, BEAT)
    params, stats = _resnet_count(
        OUTPUTS, stem, filters, kernel, downsample, BEAT,
        skip_pool=kwargs.get('skip_pool', True),
        batchnorm=kwargs.get('use_batchnorm', True),
        pool=kwargs.get('pool', 'flatten'), extra=extra,
    )
    self.assertEqual(_size(variables['params']), params)
    self.assertEqual(_size(variables.get('batch_stats', {})), stats)
    if not kwargs.get('use_batchnorm', True):
      self.assertNotIn('batch_stats', variables)


class MethodsTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.model = resnet._TinyResNet(num_outputs=OUTPUTS)
    cls.x = _ecg()
    cls.variables = jax.jit(cls.model.init)(jax.random.key(0), cls.x)
    cls.apply = staticmethod(jax.jit(cls.model.apply))
    cls.train_apply = staticmethod(jax.jit(functools.partial(
        cls.model.apply, train=True, mutable=['batch_stats']
    )))

  def test_features_then_head_is_call(self):
    # Unjitted: the same ops run one by one, so the results are bitwise equal.
    features = self.model.apply(self.variables, self.x, method='features')
    logits = self.model.apply(self.variables, features, method='head')
    out, aux = self.model.apply(self.variables, self.x)
    self.assertEqual(features.shape, (2, 38, 8))
    np.testing.assert_array_equal(features, aux['features'])
    np.testing.assert_array_equal(logits, out)
    self.assertGreater(float(jnp.std(out)), 1e-3)

  def test_init_is_deterministic_per_key(self):
    init = jax.jit(self.model.init)
    first, again = init(jax.random.key(0), self.x), init(
        jax.random.key(0), self.x
    )
    other = init(jax.random.key(5), self.x)
    jax.tree.map(np.testing.assert_array_equal, first, again)
    kernels = lambda v: [  # noqa: E731
        leaf for path, leaf in jax.tree_util.tree_leaves_with_path(v)
        if 'kernel' in jax.tree_util.keystr(path)
    ]
    for a, b in zip(kernels(first), kernels(other)):
      self.assertGreater(float(jnp.max(jnp.abs(a - b))), 1e-3)
    # he_normal kernels: std ~ sqrt(2 / fan_in) (truncation shrinks it ~12%).
    conv2 = first['params']['blocks_1']['conv2']['kernel']
    std = float(jnp.std(conv2))
    self.assertBetween(std, 0.7 * math.sqrt(2 / 40), 1.1 * math.sqrt(2 / 40))
    for leaf in jax.tree.leaves(first):
      self.assertEqual(leaf.dtype, jnp.float32)

  def test_train_updates_batch_stats_and_uses_dropout(self):
    def run(seed):
      return self.train_apply(
          self.variables, self.x, rngs={'dropout': jax.random.key(seed)}
      )

    (out_a, _), new_a = run(1)
    (out_b, _), new_b = run(1)
    (out_c, _), _ = run(2)
    self.assertEqual(
        jax.tree.structure(new_a['batch_stats']),
        jax.tree.structure(self.variables['batch_stats']),
    )
    diffs = jax.tree.map(
        lambda a, b: float(jnp.max(jnp.abs(a - b))),
        new_a['batch_stats'], self.variables['batch_stats'],
    )
    self.assertGreater(min(jax.tree.leaves(diffs)), 1e-6)
    # Momentum 0.9: a second identical step moves the running statistics
    # from s1 = 0.9 s0 + 0.1 b to 0.9 s1 + 0.1 b, i.e. s2 - s0 = 1.9 (s1 - s0).
    _, new_twice = self.train_apply(
        {'params': self.variables['params'], **new_a}, self.x,
        rngs={'dropout': jax.random.key(1)},
    )
    jax.tree.map(
        lambda s2, s1, s0: np.testing.assert_allclose(
            s2 - s0, 1.9 * (s1 - s0), rtol=1e-4, atol=1e-6
        ),
        new_twice['batch_stats'], new_a['batch_stats'],
        self.variables['batch_stats'],
    )
    np.testing.assert_array_equal(out_a, out_b)
    jax.tree.map(np.testing.assert_array_equal, new_a, new_b)
    self.assertGreater(float(jnp.max(jnp.abs(out_a - out_c))), 1e-4)
    # Inference (running statistics, no dropout) needs no key and differs.
    out_eval, _ = self.apply(self.variables, self.x)
    self.assertGreater(float(jnp.max(jnp.abs(out_a - out_eval))), 1e-4)

  def test_dropout_off_gives_key_independent_training(self):
    model = self.model.clone(dropout_rate=0.0)
    run = lambda seed: model.apply(  # noqa: E731
        self.variables, self.x, train=True, mutable=['batch_stats'],
        rngs={'dropout': jax.random.key(seed)},
    )[0][0]
    np.testing.assert_array_equal(run(1), run(2))

  def test_act_clone_keeps_params(self):
    leaky = self.model.clone(act=_leaky)
    self.assertEqual(
        jax.tree.structure(_shapes(leaky, BEAT)),
        jax.tree.structure(self.variables),
    )
    out, aux = leaky.apply(self.variables, self.x)
    ref, ref_aux = self.apply(self.variables, self.x)
    self.assertEqual(out.shape, ref.shape)
    self.assertGreater(float(jnp.max(jnp.abs(out - ref))), 1e-4)
    # ReLU outputs are >= 0; the leaky stem lets negatives through.
    self.assertGreaterEqual(float(jnp.min(ref_aux['stem'])), 0.0)
    self.assertLess(float(jnp.min(aux['stem'])), 0.0)

  def test_act_is_every_nonlinearity(self):
    """With act = identity and strided skips, the network is affine in x."""
    a, b = self.x, _ecg(seed=1)
    zero = jnp.zeros_like(a)

    def defect(model, variables):
      f = jax.jit(lambda x: model.apply(variables, x)[0])
      return f(a) + f(b) - f(a + b) - f(zero), float(jnp.max(jnp.abs(f(a))))

    model = self.model.clone(act=_identity, skip_pool=False)
    d, scale = defect(model, jax.jit(model.init)(jax.random.key(1), a))
    np.testing.assert_allclose(d, 0.0, atol=1e-4 * scale)
    # Max-pooled skips are not additive: the same check fails with them.
    d, scale = defect(self.model.clone(act=_identity), self.variables)
    self.assertGreater(float(jnp.max(jnp.abs(d))), 1e-2 * scale)

  def test_bf16_compute_is_close(self):
    out16, aux16 = self.model.clone(dtype=jnp.bfloat16).apply(
        self.variables, self.x
    )
    out32, _ = self.apply(self.variables, self.x)
    self.assertEqual(out16.dtype, jnp.float32)
    self.assertEqual(aux16['features'].dtype, jnp.bfloat16)
    scale = float(jnp.max(jnp.abs(out32)))
    np.testing.assert_allclose(out16, out32, atol=0.05 * scale, rtol=0)

  def test_gradients_finite(self):
    def loss(params):
      (out, _), _ = self.model.apply(
          {'params': params, 'batch_stats': self.variables['batch_stats']},
          self.x, train=True, mutable=['batch_stats'],
          rngs={'dropout': jax.random.key(0)},
      )
      return jnp.mean(out**2)

    grads = jax.jit(jax.grad(loss))(self.variables['params'])
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
    self.assertTrue(np.all(np.isfinite(norms)))
    self.assertGreater(min(norms), 0.0)


class ExtraAndPoolTest(absltest.TestCase):

  def test_extra_inputs_change_output(self):
    model = resnet._TinyResNet(num_outputs=OUTPUTS, num_extra=2)
    x = _ecg()
    extra = jnp.array([[60.0, 1.0], [45.0, 0.0]])
    variables = jax.jit(model.init)(jax.random.key(0), x, extra)
    apply = jax.jit(model.apply)
    out, aux = apply(variables, x, extra)
    other, _ = apply(variables, x, extra.at[:, 1].add(1.0))
    self.assertEqual(out.shape, (2, OUTPUTS))
    self.assertEqual(aux['pre_logits'].shape, (2, 38 * 8 + 2))
    np.testing.assert_array_equal(aux['pre_logits'][:, -2:], extra)
    self.assertGreater(float(jnp.min(jnp.abs(out - other))), 1e-6)
    # features -> head composes with the extras too.
    features = model.apply(variables, x, method='features')
    np.testing.assert_allclose(
        model.apply(variables, features, extra, method='head'), out,
        atol=1e-5, rtol=1e-5,
    )
    with self.assertRaisesRegex(ValueError, 'extra'):
      model.apply(variables, x)
    with self.assertRaisesRegex(ValueError, 'extra'):
      model.apply(variables, x, extra[:, :1])

  def test_extra_without_num_extra_raises(self):
    model = resnet._TinyResNet(num_outputs=OUTPUTS)
    x = jax.ShapeDtypeStruct((2, BEAT, LEADS), jnp.float32)
    with self.assertRaisesRegex(ValueError, 'num_extra'):
      jax.eval_shape(
          model.init, jax.random.key(0), x,
          jax.ShapeDtypeStruct((2, 2), jnp.float32),
      )

  def test_avg_pool_head_is_length_independent(self):
    model = resnet._TinyResNet(num_outputs=OUTPUTS, pool='avg')
    variables = jax.jit(model.init)(jax.random.key(0), _ecg(BEAT))
    self.assertEqual(
        variables['params']['classifier']['kernel'].shape, (8, OUTPUTS)
    )
    out, aux = jax.jit(model.apply)(variables, _ecg(STRIP))
    self.assertEqual(out.shape, (2, OUTPUTS))
    np.testing.assert_allclose(
        aux['pre_logits'], jnp.mean(aux['features'], axis=1), atol=1e-6
    )


class PackedDropoutTest(parameterized.TestCase):
  """`PackedDropout`: several masks per 32-bit draw, rate rounded."""

  def _apply(self, rate, bits, x, seed=0, deterministic=False):
    return resnet.PackedDropout(rate, bits).apply(
        {}, x, deterministic=deterministic,
        rngs={'dropout': jax.random.key(seed)},
    )

  @parameterized.parameters((0.2, 8), (0.2, 16), (0.5, 8), (0.1, 16))
  def test_rate_scale_and_independence(self, rate, bits):
    x = jnp.ones((64, 250, 16), jnp.float32)  # 256,000 units
    y = np.asarray(jax.jit(self._apply, static_argnums=(0, 1))(rate, bits, x))
    realised = resnet.realised_rate(rate, bits)
    self.assertLessEqual(abs(realised - rate), 2.0**-bits / 2)
    kept = y != 0
    # Binomial sd of the dropped fraction: sqrt(p (1 - p) / n) < 1e-3; a
    # threshold off by one (1 / 256 at 8 bits) fails.
    self.assertLess(abs(1 - kept.mean() - realised), 3e-3)
    np.testing.assert_allclose(y[kept], 1 / (1 - realised), rtol=1e-6)
    # Inverted dropout: the mean is unchanged (to the sampling error).
    self.assertLess(abs(y.mean() - 1), 0.02)
    # The 32 / bits uniforms packed in one word are independent: neighbours
    # (which share a word) are kept together as often as chance says.
    flat = kept.reshape(-1)
    both = np.mean(flat[0::2] & flat[1::2])
    self.assertLess(abs(both - (1 - realised) ** 2), 1e-2)

  @parameterized.parameters(8, 16)
  def test_sizes_that_do_not_fill_a_word(self, bits):
    # 5 channels: the last word of each (batch, time) row is cut short.
    x = jnp.ones((40, 700, 5), jnp.float32)
    y = np.asarray(self._apply(0.5, bits, x))
    self.assertEqual(y.shape, x.shape)
    dropped = (y == 0).mean(axis=(0, 1))  # per channel, 28,000 units each
    np.testing.assert_allclose(dropped, 0.5, atol=0.02)
    np.testing.assert_allclose(y[y != 0], 2.0)

  def test_deterministic_keyed_and_zero_rate(self):
    x = _ecg(batch=4)
    a, b = self._apply(0.2, 8, x, 1), self._apply(0.2, 8, x, 1)
    np.testing.assert_array_equal(a, b)
    self.assertGreater(
        float(jnp.mean(a != self._apply(0.2, 8, x, 2))), 0.1
    )
    np.testing.assert_array_equal(
        self._apply(0.2, 8, x, deterministic=True), x
    )
    np.testing.assert_array_equal(self._apply(0.0, 8, x), x)
    np.testing.assert_array_equal(self._apply(1.0, 16, x), jnp.zeros_like(x))
    self.assertEqual(self._apply(0.2, 8, x.astype(jnp.bfloat16)).dtype,
                     jnp.bfloat16)

  def test_bad_bits_and_rates_raise(self):
    x = _ecg()
    with self.assertRaisesRegex(ValueError, '32, 16 or 8'):
      self._apply(0.2, 12, x)
    with self.assertRaisesRegex(ValueError, 'rounds to 0'):
      self._apply(1e-4, 8, x)
    with self.assertRaisesRegex(ValueError, 'rounds to 1'):
      self._apply(0.999, 8, x)
    # The thresholds themselves: round(0.8 * 256), round(0.8 * 65536).
    self.assertEqual(resnet._keep_threshold(0.2, 8), 205)
    self.assertEqual(resnet._keep_threshold(0.2, 16), 52429)
    with self.assertRaisesRegex(ValueError, r'\[0, 1\]'):
      self._apply(1.5, 8, x)
    self.assertEqual(resnet.realised_rate(0.2, 32), 0.2)
    model = resnet._TinyResNet(num_outputs=OUTPUTS, dropout_bits=4)
    with self.assertRaisesRegex(ValueError, '32, 16 or 8'):
      model.init(jax.random.key(0), x)

  def test_resnet_with_packed_dropout_trains_alike(self):
    """8 bits: other masks than nn.Dropout's, the same parameters."""
    x = _ecg(batch=4)
    base = resnet._TinyResNet(num_outputs=OUTPUTS)
    variables = jax.jit(base.init)(jax.random.key(0), x)

    def train_out(model, seed):
      return model.apply(
          variables, x, train=True, mutable=['batch_stats'],
          rngs={'dropout': jax.random.key(seed)},
      )[0][1]['features']

    packed = base.clone(dropout_bits=8)
    jax.tree.map(  # the same parameter tree: checkpoints carry over
        lambda a, b: self.assertEqual(a.shape, b.shape), variables,
        jax.jit(packed.init)(jax.random.key(0), x),
    )
    feats = train_out(packed, 1)
    np.testing.assert_array_equal(feats, train_out(packed, 1))
    self.assertGreater(
        float(jnp.max(jnp.abs(feats - train_out(base, 1)))), 1e-4
    )
    # Inference has no dropout: the two give the same logits.
    np.testing.assert_array_equal(
        base.apply(variables, x)[0], packed.apply(variables, x)[0]
    )


if __name__ == '__main__':
  absltest.main()
