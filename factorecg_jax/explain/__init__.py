"""Attribution methods (saliency, IG, DeepLIFT, GradCAM, ...) in pure JAX."""

from factorecg_jax.explain import activations
from factorecg_jax.explain import methods
from factorecg_jax.explain import presets
