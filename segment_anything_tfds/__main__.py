"""`python -m segment_anything_tfds ...` runs the `segment-anything-tfds` CLI."""

import sys

from segment_anything_tfds import cli

if __name__ == '__main__':
  sys.exit(cli.main())
