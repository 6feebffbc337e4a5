"""Model families; `MODELS` maps a config's `model.name` to its class."""

import dataclasses
import functools
import json
from typing import Any

from factorecg_jax.models import resnet
from factorecg_jax.models import vae

MODELS = {
    'vae': vae.VAE,
    'resnet': resnet.ResNet,
    'resnet_ribeiro': resnet.ResNetRibeiro,
    'resnet_cpu': resnet.ResNetCPU,
}


NO_DEFAULT = object()  # what `setting_default` returns for a required field


def setting_default(model_name: str | None, key: str) -> Any:
  """The value `MODELS[model_name]` gives `key` when a config omits it.

  A preset's keyword first (a `functools.partial` in `MODELS`), else the
  Linen field's default; `NO_DEFAULT` for a required field, an unknown key
  or an unknown model. Lets a run trained before a config gained a key
  (e.g. `dropout_bits`) match a config naming that key at its default.
  """
  factory = MODELS.get(model_name)
  while isinstance(factory, functools.partial):
    if key in factory.keywords:
      return factory.keywords[key]
    factory = factory.func
  field = getattr(factory, '__dataclass_fields__', {}).get(key)
  if field is None or field.default is dataclasses.MISSING:
    return NO_DEFAULT
  return field.default


def is_default(model_name: str | None, key: str, value: Any) -> bool:
  """Whether `value` (as JSON reads it back) is `key`'s default there."""
  default = setting_default(model_name, key)
  return default is not NO_DEFAULT and json.loads(
      json.dumps(default, default=str)) == value
