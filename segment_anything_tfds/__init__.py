"""segment_anything_tfds: SA-1B (Segment Anything) for TensorFlow Datasets.

`import segment_anything_tfds` makes `tfds.builder('segment_anything')`,
`tfds.load('segment_anything', ...)` and `tfds build segment_anything
--imports segment_anything_tfds` use this package's builder, whatever was
imported or resolved before.
"""

from segment_anything_tfds import registration as _registration
from segment_anything_tfds.config import lenient_config
from segment_anything_tfds.config import SegmentAnythingConfig
from segment_anything_tfds.config import tars_config
from segment_anything_tfds.examples import BadInputError
from segment_anything_tfds.segment_anything.segment_anything_dataset_builder import Builder

__version__ = '2.0.0'

_registration.register(Builder)

__all__ = [
    'BadInputError',
    'Builder',
    'SegmentAnythingConfig',
    'lenient_config',
    'tars_config',
]
