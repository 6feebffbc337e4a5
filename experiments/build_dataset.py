r"""Builds one of the factorecg_jax TFDS data sets as ArrayRecord.

The `tfds build` command line of tensorflow-datasets 4.9 imports TensorFlow,
which is not a dependency here, so this script stands in for it:

  python experiments/build_dataset.py --dataset=ptbxl \
      --manual_dir=~/data/ptb-xl/1.0.3 --data_dir=~/tensorflow_datasets

  python experiments/build_dataset.py --dataset=ecg_folder \
      --config=my_cohort --manual_dir=~/cohort --data_dir=~/tfds \
      --folder_format=npz --sampling_rate=250 --label_columns=lvef_low \
      --survival

`--dataset=synthetic_ecg` takes no manual directory. Read back with
`tfds.data_source('<dataset>/<config>', split=..., data_dir=...)`.
"""

import os

from absl import app
from absl import flags
import tensorflow_datasets as tfds

from factorecg_jax.data.deepfake_ecg import deepfake_ecg_dataset_builder
from factorecg_jax.data.ecg_folder import ecg_folder_dataset_builder
from factorecg_jax.data.ptbxl import ptbxl_dataset_builder
from factorecg_jax.data.synthetic_ecg import synthetic_ecg_dataset_builder

BUILDERS = {
    'ptbxl': ptbxl_dataset_builder.Builder,
    'ecg_folder': ecg_folder_dataset_builder.Builder,
    'deepfake_ecg': deepfake_ecg_dataset_builder.Builder,
    'synthetic_ecg': synthetic_ecg_dataset_builder.Builder,
}

_DATASET = flags.DEFINE_enum('dataset', None, list(BUILDERS), 'Builder.')
_CONFIG = flags.DEFINE_string(
    'config', None, 'Config name (default: the builder default; for '
    'ecg_folder a new name makes a cohort config from the flags below).')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data directory.')
_MANUAL_DIR = flags.DEFINE_string('manual_dir', None, 'Folder of the input.')
_STRICT = flags.DEFINE_bool('strict', False, 'Stop at the first bad record.')
_BATCH = flags.DEFINE_integer('batch_size', None, 'Records per beat batch.')
# ecg_folder only.
_FORMAT = flags.DEFINE_enum('folder_format', 'wfdb', ['wfdb', 'npz'],
                            'ecg_folder: record file format.')
_CSV = flags.DEFINE_string('csv_name', 'labels.csv', 'ecg_folder: CSV.')
_RECORDS = flags.DEFINE_string('records_dir', 'records',
                               'ecg_folder: records folder.')
_ID = flags.DEFINE_string('id_column', 'id', 'ecg_folder: id column.')
_LABELS = flags.DEFINE_list('label_columns', [], 'ecg_folder: labels.')
_SURVIVAL = flags.DEFINE_bool('survival', False,
                              'ecg_folder: store time/event columns.')
_RATE = flags.DEFINE_float('sampling_rate', 500.0, 'ecg_folder: Hz.')
_DURATION = flags.DEFINE_float('duration_s', 10.0, 'ecg_folder: seconds.')
_LEADS = flags.DEFINE_list('lead_names', [], 'ecg_folder: stored lead order.')
_STRIP = flags.DEFINE_bool('with_strip', False, 'ecg_folder: keep strips.')


def _config():
  """The config name, or for a new ecg_folder cohort a config object."""
  name = _CONFIG.value
  builder_cls = BUILDERS[_DATASET.value]
  if _DATASET.value != 'ecg_folder' or name is None or name in {
      c.name for c in builder_cls.BUILDER_CONFIGS}:
    return name
  return ecg_folder_dataset_builder.EcgFolderConfig(
      name=name, csv_name=_CSV.value, records_dir=_RECORDS.value,
      file_format=_FORMAT.value, id_column=_ID.value,
      label_columns=tuple(_LABELS.value), survival=_SURVIVAL.value,
      sampling_rate=_RATE.value, duration_s=_DURATION.value,
      lead_names=tuple(_LEADS.value), with_strip=_STRIP.value,
  )


def main(argv):
  del argv
  kwargs = dict(data_dir=_DATA_DIR.value, file_format='array_record')
  config = _config()
  if config is not None:
    kwargs['config'] = config
  if _DATASET.value != 'synthetic_ecg':
    kwargs.update(strict=_STRICT.value, batch_size=_BATCH.value)
  builder = BUILDERS[_DATASET.value](**kwargs)
  download_config = None
  if _MANUAL_DIR.value:
    download_config = tfds.download.DownloadConfig(
        manual_dir=os.path.expanduser(_MANUAL_DIR.value))
  builder.download_and_prepare(download_config=download_config)
  print(f'Built {builder.info.full_name} in {builder.data_dir}:')
  for split, info in builder.info.splits.items():
    print(f'  {split}: {info.num_examples} records')


if __name__ == '__main__':
  flags.mark_flags_as_required(['dataset'])
  app.run(main)
