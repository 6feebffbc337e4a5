"""Tests for the causal convolution blocks."""

import math

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import pytest
import jax.numpy as jnp
import numpy as np

from factorecg_jax.models import blocks


def _reference_conv(x, kernel, bias, dilation):
  """y[b, t] = bias + sum_j x[b, t - (k - 1 - j) * dilation] @ kernel[j]."""
  k = kernel.shape[0]
  batch, length, _ = x.shape
  y = np.tile(bias, (batch, length, 1)).astype(np.float64)
  for t in range(length):
    for j in range(k):
      s = t - (k - 1 - j) * dilation
      if s >= 0:
        y[:, t] += x[:, s] @ kernel[j]
  return y


def _init(module, x, seed=0):
  """Random variables for `module` without running its (slow to compile)
  initialisers: U(+-1/sqrt(fan_in)) kernels, U(+-0.1) biases."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), x)
  rng = np.random.default_rng(seed)

  def draw(s):
    bound = 1 / math.sqrt(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 0.1
    return jnp.asarray(rng.uniform(-bound, bound, s.shape), s.dtype)

  return jax.tree.map(draw, shapes)


# XLA optimisation passes off for this module (tests/conftest.py).
pytestmark = pytest.mark.usefixtures('fast_compile')


class CausalConvTest(parameterized.TestCase):

  @parameterized.product(padding=('chomp', 'left'), dilation=(1, 3))
  def test_matches_reference(self, padding, dilation):
    x = np.random.default_rng(0).normal(size=(2, 17, 3)).astype(np.float32)
    conv = blocks.CausalConv(4, 3, dilation, padding=padding)
    variables = _init(conv, x)
    y = conv.apply(variables, x)
    p = variables['params']
    expected = _reference_conv(
        x, np.asarray(p['kernel']), np.asarray(p['bias']), dilation
    )
    self.assertEqual(y.shape, (2, 17, 4))
    np.testing.assert_allclose(y, expected, atol=1e-5, rtol=0)

  @parameterized.parameters(False, True)
  def test_is_causal(self, transpose):
    x = np.random.default_rng(1).normal(size=(1, 30, 2)).astype(np.float32)
    conv = blocks.CausalConv(3, 5, 2, padding='left', transpose=transpose)
    variables = _init(conv, x)
    t0 = 12
    x2 = x.copy()
    x2[:, t0] += 1.0
    y, y2 = conv.apply(variables, x), conv.apply(variables, x2)
    np.testing.assert_array_equal(y[:, :t0], y2[:, :t0])
    self.assertGreater(float(jnp.max(jnp.abs(y[:, t0] - y2[:, t0]))), 1e-3)

  def test_left_equals_chomp(self):
    x = np.random.default_rng(2).normal(size=(2, 40, 5)).astype(np.float32)
    chomp = blocks.CausalConv(6, 5, 8, padding='chomp')
    left = blocks.CausalConv(6, 5, 8, padding='left')
    variables = _init(chomp, x)
    np.testing.assert_allclose(
        left.apply(variables, x), chomp.apply(variables, x), atol=1e-6
    )

  def test_transpose_is_time_reversed_kernel(self):
    x = np.random.default_rng(3).normal(size=(2, 25, 3)).astype(np.float32)
    conv = blocks.CausalConv(4, 3, 2, padding='left', transpose=True)
    variables = _init(conv, x)
    p = variables['params']
    flipped = {'params': dict(p, kernel=p['kernel'][::-1])}
    plain = blocks.CausalConv(4, 3, 2, padding='left')
    np.testing.assert_allclose(
        conv.apply(variables, x), plain.apply(flipped, x), atol=1e-6
    )
    # Not a no-op: the transposed conv differs from the plain one.
    self.assertGreater(
        float(jnp.max(jnp.abs(conv.apply(variables, x)
                              - plain.apply(variables, x)))), 1e-3)

  def test_bad_padding_raises(self):
    with self.assertRaisesRegex(ValueError, 'padding'):
      _init(blocks.CausalConv(2, 3, padding='same'), jnp.zeros((1, 8, 2)))

  def test_torch_default_init(self):
    x = jnp.zeros((1, 8, 64))
    p = blocks.CausalConv(128, 5).init(jax.random.key(0), x)['params']
    bound = 1.0 / math.sqrt(64 * 5)
    self.assertLessEqual(float(jnp.max(jnp.abs(p['kernel']))), bound)
    self.assertLessEqual(float(jnp.max(jnp.abs(p['bias']))), bound)
    # Uniform on [-b, b] has sd b / sqrt(3).
    np.testing.assert_allclose(
        float(jnp.std(p['kernel'])), bound / math.sqrt(3), rtol=0.02
    )
    self.assertGreater(float(jnp.std(p['bias'])), bound / 3)

  def test_bf16_compute_keeps_fp32_params(self):
    x = np.random.default_rng(4).normal(size=(2, 20, 3)).astype(np.float32)
    conv = blocks.CausalConv(4, 3, 2, dtype=jnp.bfloat16)
    variables = _init(conv, x)
    self.assertEqual(variables['params']['kernel'].dtype, jnp.float32)
    y = conv.apply(variables, x)
    self.assertEqual(y.dtype, jnp.bfloat16)
    y32 = conv.clone(dtype=jnp.float32).apply(variables, x)
    np.testing.assert_allclose(
        y.astype(jnp.float32), y32, atol=0.05, rtol=0.02
    )


class CausalBlockTest(parameterized.TestCase):

  def test_residual_only_when_channels_change(self):
    x = jnp.zeros((1, 10, 4))
    same = _init(blocks.CausalBlock(4, 3, 1), x)['params']
    wider = _init(blocks.CausalBlock(6, 3, 1), x)['params']
    self.assertEqual(set(same), {'conv1', 'conv2'})
    self.assertEqual(set(wider), {'conv1', 'conv2', 'residual'})
    self.assertEqual(wider['residual']['kernel'].shape, (1, 4, 6))

  @parameterized.parameters(False, True)
  def test_composition(self, final_act):
    x = np.random.default_rng(5).normal(size=(2, 16, 3)).astype(np.float32)
    block = blocks.CausalBlock(5, 3, 2, final_act=final_act)
    p = _init(block, x)['params']
    conv = lambda name, k, d, h: blocks.CausalConv(5, k, d).apply(  # noqa: E731
        {'params': p[name]}, h
    )
    h = nn.leaky_relu(conv('conv1', 3, 2, x))
    h = nn.leaky_relu(conv('conv2', 3, 2, h))
    out = h + conv('residual', 1, 1, x)
    if final_act:
      out = nn.leaky_relu(out)
    np.testing.assert_allclose(
        block.apply({'params': p}, x), out, atol=1e-6
    )

  def test_act_is_a_field(self):
    x = np.random.default_rng(6).normal(size=(2, 16, 3)).astype(np.float32)
    block = blocks.CausalBlock(3, 3, 1, final_act=True)
    variables = _init(block, x)
    y = block.apply(variables, x)
    y_relu = block.clone(act=nn.relu).apply(variables, x)
    self.assertLess(float(jnp.min(y)), 0.0)  # leaky ReLU lets negatives out
    self.assertGreaterEqual(float(jnp.min(y_relu)), 0.0)


class CausalCNNTest(parameterized.TestCase):

  @parameterized.parameters(False, True)
  def test_dilations_and_receptive_field(self, reverse):
    depth, k, length = 2, 3, 64
    cnn = blocks.CausalCNN(6, 4, depth, k, reverse=reverse, padding='left')
    x = np.random.default_rng(7).normal(size=(1, length, 3))
    x = x.astype(np.float32)
    variables = _init(cnn, x)
    # Two convolutions per block, dilations 1, 2 and 4 in some order.
    receptive_field = 2 * (k - 1) * (1 + 2 + 4)
    grad = jax.grad(lambda v: cnn.apply(variables, v)[0, -1].sum())(x)
    seen = np.nonzero(np.abs(grad[0]).sum(-1) > 0)[0]
    self.assertEqual(seen.min(), length - 1 - receptive_field)
    self.assertEqual(seen.max(), length - 1)
    self.assertEqual(cnn.apply(variables, x).shape, (1, length, 4))

  def test_param_count(self):
    c, cin, cout, depth, k = 8, 3, 5, 3, 5
    p = jax.eval_shape(
        blocks.CausalCNN(c, cout, depth, k).init,
        jax.random.key(0),
        jnp.zeros((1, 20, cin)),
    )
    count = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(p))
    conv = lambda i, o, kk: i * o * kk + o  # noqa: E731
    expected = (
        conv(cin, c, k) + conv(c, c, k) + conv(cin, c, 1)  # block0
        + (depth - 1) * 2 * conv(c, c, k)  # inner blocks
        + conv(c, cout, k) + conv(cout, cout, k) + conv(c, cout, 1)  # last
    )
    self.assertEqual(count, expected)


if __name__ == '__main__':
  absltest.main()
