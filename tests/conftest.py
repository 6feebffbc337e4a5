"""Test-wide setup: eight forced CPU devices, set before JAX is imported."""

import os

# Multi-device code paths are tested on CPU; this must precede `import jax`.
os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '')
    + ' --xla_force_host_platform_device_count=8'
).strip()
os.environ.setdefault('MPLBACKEND', 'Agg')
