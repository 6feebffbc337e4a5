"""The `deepfake_ecg` TFDS data set: DeepFake-ECG with MUSE measurements."""
