"""The `synthetic_ecg` TFDS data set: simulated 12-lead median beats."""
