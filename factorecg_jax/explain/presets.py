"""Named settings of the attribution methods: `captum` and `storas2025`.

A preset maps each method name (`methods.METHOD_NAMES`, plus 'random' where
the control is part of it) to its settings dataclass, or None for methods
without settings; `methods.explain_all(..., preset=name)` runs them all.

* `captum`: Captum 0.9's defaults, read from its source (`attr/_core`):
  Saliency `abs=True`; NoiseTunnel(Saliency) `nt_type='smoothgrad'`,
  `nt_samples=5`, `stdevs=1.0` (absolute, so |gradient| is averaged);
  GradientShap `n_samples=5`, `stdevs=0.0`, `multiply_by_inputs=True`, zero
  baseline; IntegratedGradients `n_steps=50`, `method='gausslegendre'`,
  `multiply_by_inputs=True`, zero baseline; DeepLift
  `multiply_by_inputs=True`, `eps=1e-10`, zero baseline; LayerGradCam
  `relu_attributions=False` (upsampled linearly here; Captum's
  `LayerAttribution.interpolate` defaults to 'nearest', pass 'linear');
  Deconvolution, GuidedBackprop, InputXGradient have no options.
* `storas2025` (the settings of Storås et al. 2025 as the project's issue
  lists them): signed Saliency; SmoothGrad with 25 samples and sigma = 0.02 x each
  record's input range (signed gradients averaged, matching the signed
  saliency; an assumption where the paper is silent); DeepLIFT, IG and
  GradientSHAP with `multiply_by_inputs=False`; IG 50 Gauss-Legendre steps;
  GradientSHAP 50 samples, zero baseline, no input noise; GradCAM on the
  last convolutional block with ReLU and linear upsampling; and the
  uniform-noise random control.
"""

import types

from factorecg_jax.explain import methods

CAPTUM = types.MappingProxyType({
    'saliency': methods.SaliencySettings(absolute=True),
    'deconvolution': None,
    'guided_backprop': None,
    'gradient_shap': methods.GradientShapSettings(
        n_samples=5, stdev=0.0, multiply_by_inputs=True
    ),
    'smoothgrad': methods.SmoothGradSettings(
        n_samples=5, stdev=1.0, relative=False, absolute=True,
        nt_type='smoothgrad',
    ),
    'input_x_gradient': None,
    'deeplift': methods.DeepLiftSettings(multiply_by_inputs=True, eps=1e-10),
    'integrated_gradients': methods.IntegratedGradientsSettings(
        n_steps=50, method='gausslegendre', multiply_by_inputs=True
    ),
    'gradcam': methods.GradCamSettings(relu=False),
})

STORAS2025 = types.MappingProxyType({
    'saliency': methods.SaliencySettings(absolute=False),
    'deconvolution': None,
    'guided_backprop': None,
    'gradient_shap': methods.GradientShapSettings(
        n_samples=50, stdev=0.0, multiply_by_inputs=False
    ),
    'smoothgrad': methods.SmoothGradSettings(
        n_samples=25, stdev=0.02, relative=True, absolute=False,
        nt_type='smoothgrad',
    ),
    'input_x_gradient': None,
    'deeplift': methods.DeepLiftSettings(multiply_by_inputs=False),
    'integrated_gradients': methods.IntegratedGradientsSettings(
        n_steps=50, method='gausslegendre', multiply_by_inputs=False
    ),
    'gradcam': methods.GradCamSettings(relu=True),
    methods.RANDOM: methods.RandomSettings(),
})

PRESETS = types.MappingProxyType({'captum': CAPTUM, 'storas2025': STORAS2025})
