"""Model families; `MODELS` maps a config's `model.name` to its class."""

from factorecg_jax.models import resnet
from factorecg_jax.models import vae

MODELS = {
    'vae': vae.VAE,
    'resnet': resnet.ResNet,
    'resnet_ribeiro': resnet.ResNetRibeiro,
    'resnet_cpu': resnet.ResNetCPU,
}
