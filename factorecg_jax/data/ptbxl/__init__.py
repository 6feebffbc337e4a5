"""The `ptbxl` TFDS data set: PTB-XL 12-lead ECGs with median beats."""
