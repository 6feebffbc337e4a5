"""TFDS builder `synthetic_ecg`: simulated 12-lead ECG records.

Build as ArrayRecord (no TensorFlow needed) and read by random access; importing
this module registers the name with TFDS:

  builder = Builder(config='uniform_10k', data_dir=data_dir,
                    file_format='array_record')
  builder.download_and_prepare()
  source = tfds.data_source('synthetic_ecg/uniform_10k', split='train',
                            data_dir=data_dir)

Record i of a split equals `sources.OnTheFlySource(..., split=s)[i]` for the
same seed and mode (see `factorecg_jax.data.sources`).
"""

import dataclasses
from typing import Any, Iterator

from absl import logging
from etils import epath
import jax
import numpy as np
import tensorflow_datasets as tfds

from factorecg_jax.data import simulator
from factorecg_jax.data import sources
from factorecg_jax.data import tfds_compat

# Splits over 1 GB build without TensorFlow too.
tfds_compat.install()

_FIELD_DOCS = {
    'id': 'Record index within its split (the simulation key index).',
    'factors': 'Generating factors [14], in FACTOR_NAMES order.',
    'beat': 'Noisy median beat [600, 12], mV, 500 Hz, QRS onset at 200.',
    'beat_clean': 'Noise-free median beat [600, 12], mV.',
    'strip': '10 s rhythm strip [5000, 12], mV, 500 Hz.',
    'labels': 'Multi-hot diagnostic labels [NUM_LABELS], LABEL_NAMES order.',
    'ef': 'Left-ventricular ejection fraction (%).',
    'reduced_ef': 'Reduced ejection fraction flag.',
    'age': 'Age (years), N(62, 14^2) clipped to [18, 95]; not in the ECG.',
    'sex': 'Sex, 1 = male, 0 = female; not in the ECG.',
    'time': 'Observed follow-up time (years): event or censoring.',
    'event': 'Death observed within the follow-up time.',
}


@dataclasses.dataclass
class SyntheticEcgConfig(tfds.core.BuilderConfig):
  """Size and sampler of a synthetic data set.

  Attributes:
    num_train: records in the 'train' split.
    num_validation: records in the 'validation' split.
    num_test: records in the 'test' split.
    mode: factor sampler, 'uniform' or 'realistic'.
    with_strip: also store the 10 s strip (about 240 kB per record).
    seed: data seed; record i of split s depends only on (seed, s, i).
    rr_std: beat-to-beat RR variability of the strips (relative).
    chunk_size: records simulated per request (progress granularity; the
      simulator itself runs in calls of `simulator.BLOCK` records).
    survival_model: hazard of 'time'/'event': 'age_sex' (ECG, EF, age and
      sex) or 'ecg_only' (the hazard of version 1.0.0, which had no age or
      sex; the other fields of 1.0.0 records are unchanged).
  """

  num_train: int = 1000
  num_validation: int = 100
  num_test: int = 100
  mode: str = 'uniform'
  with_strip: bool = False
  seed: int = 0
  rr_std: float = 0.05
  chunk_size: int = 1024
  survival_model: str = 'age_sex'


def _sized_config(mode: str, size: str, num_train: int, **kwargs):
  strip = kwargs.get('with_strip', False)
  return SyntheticEcgConfig(
      name=f'{mode}_{size}' + ('_strip' if strip else ''),
      description=(
          f'{num_train} training records, factors sampled {mode}ly'
          + (', with 10 s strips.' if strip else '.')
      ),
      num_train=num_train,
      num_validation=num_train // 10,
      num_test=num_train // 10,
      mode=mode,
      **kwargs,
  )


def _builder_configs() -> list[SyntheticEcgConfig]:
  configs = [
      SyntheticEcgConfig(
          name='tiny',
          description='A few records for tests.',
          num_train=16,
          num_validation=8,
          num_test=8,
          chunk_size=8,
      )
  ]
  for mode in ('uniform', 'realistic'):
    for size, n in (('1k', 1_000), ('10k', 10_000), ('100k', 100_000)):
      configs.append(_sized_config(mode, size, n))
    configs.append(_sized_config(mode, '1k', 1_000, with_strip=True))
  return configs


def _to_feature(spec: Any, doc: str | None = None):
  """A TFDS feature for one field of `sources.record_spec`."""
  if isinstance(spec, dict):
    return tfds.features.FeaturesDict(
        {k: _to_feature(v, doc=k) for k, v in spec.items()}
    )
  if spec.shape:
    return tfds.features.Tensor(shape=spec.shape, dtype=spec.dtype, doc=doc)
  return tfds.features.Scalar(dtype=spec.dtype, doc=doc)


class Builder(tfds.core.GeneratorBasedBuilder):
  """DatasetBuilder for synthetic_ecg."""

  VERSION = tfds.core.Version('1.2.0')
  RELEASE_NOTES = {
      '1.0.0': 'Initial release.',
      '1.1.0': (
          "New features 'age' (years) and 'sex' (1 = male). They enter the "
          'survival hazard, so time and event differ from 1.0.0 (the '
          "config field survival_model='ecg_only' gives the 1.0.0 draw); "
          'every other field of a record is unchanged.'
      ),
      '1.2.0': (
          'The simulator runs in calls of a fixed size, each field always '
          'from the same compiled program, so a stored record equals the '
          'on-the-fly record bit for bit; values differ from 1.1.0 in the '
          'last float32 bits only (rounding of other batch sizes).'
      ),
  }
  BUILDER_CONFIGS = _builder_configs()
  DEFAULT_CONFIG_NAME = 'uniform_10k'
  # TFDS finds README.md, CITATIONS.bib and checksums.tsv through the top-level
  # package, which fails when it is a namespace package (a stale editable
  # install); naming this folder directly works in every install mode.
  pkg_dir_path = epath.Path(__file__).parent
  code_path = epath.Path(__file__)

  def _fields(self) -> tuple[str, ...]:
    config = self.builder_config
    return sources.DEFAULT_FIELDS + (('strip',) if config.with_strip else ())

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    spec = sources.record_spec(
        mode=config.mode, rr_std=config.rr_std, fields=self._fields()
    )
    features = {
        name: _to_feature(spec[name], doc=_FIELD_DOCS.get(name, name))
        for name in self._fields()
    }
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
        supervised_keys=None,
        # Stored in index order, so position i of a split is record i.
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(
            factor_names=list(simulator.FACTOR_NAMES),
            label_names=list(getattr(simulator, 'LABEL_NAMES', ())),
            leads=list(simulator.LEADS),
            sampling_rate_hz=int(simulator.FS),
            seed=config.seed,
            mode=config.mode,
            survival_model=config.survival_model,
        ),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    """Returns SplitGenerators."""
    del dl_manager  # Nothing to download: records are simulated.
    config = self.builder_config
    sizes = {
        'train': config.num_train,
        'validation': config.num_validation,
        'test': config.num_test,
    }
    return {
        split: self._generate_examples(split, n)
        for split, n in sizes.items()
        if n > 0
    }

  def _generate_examples(
      self, split: str, num_records: int
  ) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields (index, record), simulated a chunk at a time."""
    config = self.builder_config
    chunk = config.chunk_size
    for start in range(0, num_records, chunk):
      indices = np.arange(start, min(start + chunk, num_records))
      batch = sources.simulate_batch(
          config.seed,
          split,
          indices,
          mode=config.mode,
          rr_std=config.rr_std,
          fields=self._fields(),
          survival_model=config.survival_model,
      )
      logging.log_every_n_seconds(
          logging.INFO,
          'synthetic_ecg/%s %s: %d / %d records',
          10,
          config.name,
          split,
          start + len(indices),
          num_records,
      )
      for j, index in enumerate(indices):
        yield int(index), jax.tree.map(lambda x, j=j: x[j], batch)
