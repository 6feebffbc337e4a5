"""The `ecg_folder` TFDS data set: a user cohort of WFDB or .npz ECGs."""
