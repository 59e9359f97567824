"""segment_anything_tfds: SA-1B (Segment Anything) for TensorFlow Datasets.

`import segment_anything_tfds` makes `tfds.builder('segment_anything')`,
`tfds.load('segment_anything', ...)` and `tfds build segment_anything
--imports segment_anything_tfds` use this package's builder, whatever was
imported or resolved before. The import itself is light: it loads neither
TensorFlow, TFDS, Beam nor the build engines; the builder's module is
imported when TFDS asks for the name (or `Builder` is used).

Public API:
  Builder, SegmentAnythingConfig, tars_config, lenient_config,
    images_config: preparing.
  errors: the package's exceptions (`errors.Error` and its subclasses;
    `BadInputError` is what a strict build raises on bad input).
  DownloadOptions: how tars are fetched (the builder's `download_options`).
  rle: COCO RLE decode/encode/area/to_bbox/iou/merge in TensorFlow ops.
  decode_masks: a tf.data map that samples and decodes an example's masks.
  to_sam_inputs, sam_dataset, load_sam_dataset: SAM-style training inputs
    in tf.data (layouts 'sam' and 'keras_hub', see sam_layouts).
  SamDataset, load_sam_data_source, grain_loader, to_sam_inputs_np: the same
    inputs in numpy, for JAX (Grain) and PyTorch (numpy_inputs).
  SAMTrainer, sam_loss: fine-tuning KerasHub's SAM (keras_sam).
  MaskIoU, evaluate_predictions, format_table: mask IoU metric/evaluation.
  paste_objects, paste_from_example: copy-paste augmentation (tf.data).
"""

import time as _time

# What a command's "time:" counts from. Not the process's start: a shell
# that execs the command (the last of `bash -c "a && b"`) hands it its pid,
# and with it the time the shell had run.
_IMPORTED_AT = _time.perf_counter()

import importlib as _importlib
import importlib.util as _importlib_util

if _importlib_util.find_spec('tensorflow') is None:
  raise ImportError(
      'segment_anything_tfds needs TensorFlow, which you choose: pip install'
      ' "segment_anything_tfds[tensorflow]" (or "[tensorflow-cpu]"); see the'
      ' README, "Installing".')

from segment_anything_tfds import _compat
from segment_anything_tfds import tfds_seam as _tfds_seam
from segment_anything_tfds.config import images_config
from segment_anything_tfds.config import lenient_config
from segment_anything_tfds.config import tars_config
from segment_anything_tfds import errors
from segment_anything_tfds.errors import BadInputError
from segment_anything_tfds.options import DownloadOptions

__version__ = '2.0.0'

_BUILDER = ('segment_anything_tfds.segment_anything'
            '.segment_anything_dataset_builder')


def _builder_cls():
  return _importlib.import_module(_BUILDER).Builder


_tfds_seam.register('segment_anything', _builder_cls)

# What imports TFDS or TensorFlow (the builder, the config class, the
# read-time API) is loaded on first use, so `import segment_anything_tfds`
# stays light: the build's worker processes import it too.
_LAZY = {
    'Builder': (_BUILDER, 'Builder'),
    'SegmentAnythingConfig': ('segment_anything_tfds.config',
                              'SegmentAnythingConfig'),
    'rle': ('segment_anything_tfds.read.rle', None),
    'decode_masks': ('segment_anything_tfds.read.masks', 'decode_masks'),
    'evaluate_predictions': ('segment_anything_tfds.train.evaluation',
                             'evaluate_predictions'),
    'format_table': ('segment_anything_tfds.train.evaluation', 'format_table'),
    'MaskIoU': ('segment_anything_tfds.train.evaluation', 'MaskIoU'),
    'paste_from_example': ('segment_anything_tfds.read.copy_paste',
                           'paste_from_example'),
    'paste_objects': ('segment_anything_tfds.read.copy_paste', 'paste_objects'),
    'load_sam_dataset': ('segment_anything_tfds.read.sam_inputs', 'load_sam_dataset'),
    'sam_dataset': ('segment_anything_tfds.read.sam_inputs', 'sam_dataset'),
    'to_sam_inputs': ('segment_anything_tfds.read.sam_inputs', 'to_sam_inputs'),
    'SamDataset': ('segment_anything_tfds.read.numpy_inputs', 'SamDataset'),
    'load_sam_data_source': ('segment_anything_tfds.read.numpy_inputs',
                             'load_sam_data_source'),
    'grain_loader': ('segment_anything_tfds.read.numpy_inputs', 'grain_loader'),
    'to_sam_inputs_np': ('segment_anything_tfds.read.numpy_inputs',
                         'to_sam_inputs_np'),
    'SAMTrainer': ('segment_anything_tfds.train.keras_sam', 'SAMTrainer'),
    'sam_loss': ('segment_anything_tfds.train.keras_sam', 'sam_loss'),
}


_compat.install()


def __getattr__(name: str):
  if name in _compat.MOVED and name not in _LAZY:
    return _compat.moved_module(name)
  if name not in _LAZY:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  module, attr = _LAZY[name]
  value = _importlib.import_module(module)
  return value if attr is None else getattr(value, attr)


def __dir__():
  return sorted(list(globals()) + list(_LAZY))

__all__ = [
    'BadInputError',
    'Builder',
    'DownloadOptions',
    'MaskIoU',
    'SAMTrainer',
    'SamDataset',
    'SegmentAnythingConfig',
    'decode_masks',
    'errors',
    'evaluate_predictions',
    'format_table',
    'grain_loader',
    'images_config',
    'lenient_config',
    'load_sam_data_source',
    'load_sam_dataset',
    'paste_from_example',
    'paste_objects',
    'rle',
    'sam_dataset',
    'sam_loss',
    'tars_config',
    'to_sam_inputs',
    'to_sam_inputs_np',
]
