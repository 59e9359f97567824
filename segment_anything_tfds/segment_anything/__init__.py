"""The `segment_anything` dataset folder, laid out as TFDS reads it."""
