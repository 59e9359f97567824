"""The `segment_anything` feature spec, stated once.

Names, dtypes and shapes are those of TFDS's builtin `segment_anything` 1.0.0,
so code written against it keeps working. Every feature carries a `doc=`.
"""

import numpy as np
import tensorflow_datasets as tfds

_BOX_DOC = (
    'in TFDS format: normalized [ymin, xmin, ymax, xmax], computed from the'
    ' SA-1B [x, y, w, h] box as the builtin does (ymax = (y + h) / height).'
    ' SA-1B boxes are inclusive extents, so w and h are one less than'
    " pycocotools' toBbox of the same mask."
)


def _scalar(dtype, doc: str) -> tfds.features.Scalar:
  return tfds.features.Scalar(dtype=dtype, doc=doc)


def annotation_features() -> tfds.features.FeaturesDict:
  """Features of one mask annotation."""
  return tfds.features.FeaturesDict({
      'area': _scalar(np.uint64, 'The area of the mask, in pixels.'),
      'bbox': tfds.features.BBoxFeature(doc=f'The box around the mask, {_BOX_DOC}'),
      'crop_box': tfds.features.BBoxFeature(
          doc=f'The image crop the mask was generated from, {_BOX_DOC}'
      ),
      'id': _scalar(np.uint64, 'The identifier of the annotation.'),
      'point_coords': tfds.features.Tensor(
          shape=(1, 2),
          dtype=np.float64,
          doc='The [[x, y]] point, in pixels, prompted to generate the mask.',
      ),
      'predicted_iou': _scalar(
          np.float64, "The model's own prediction of the mask's IoU."
      ),
      'segmentation': tfds.features.FeaturesDict(
          {
              'counts': tfds.features.Tensor(
                  shape=(),
                  dtype=np.str_,
                  doc=(
                      'COCO compressed RLE string, byte for byte as in SA-1B'
                      ' (column-major runs). Decode with'
                      ' segment_anything_tfds.read.rle.decode or pycocotools.'
                  ),
              ),
              'size': tfds.features.Tensor(
                  shape=(2,),
                  dtype=np.uint64,
                  doc='[height, width] of the mask, equal to the image size.',
              ),
          },
          doc='The mask in COCO RLE format: {counts, size}.',
      ),
      'stability_score': _scalar(
          np.float64, "A measure of the mask's quality (stability under"
          ' threshold changes).'
      ),
  })


def features() -> tfds.features.FeaturesDict:
  """The full example spec: one image and all its mask annotations."""
  return tfds.features.FeaturesDict({
      'image': tfds.features.FeaturesDict(
          {
              'content': tfds.features.Image(
                  doc='The JPEG bytes exactly as stored in the SA-1B tar.'
              ),
              'file_name': tfds.features.Tensor(
                  shape=(), dtype=np.str_, doc='e.g. sa_1.jpg'
              ),
              'height': _scalar(np.uint64, 'Image height, in pixels.'),
              'image_id': _scalar(
                  np.uint64, 'SA-1B image id; also the example key.'
              ),
              'width': _scalar(np.uint64, 'Image width, in pixels.'),
          },
          doc='The image and its metadata.',
      ),
      'annotations': tfds.features.Sequence(
          annotation_features(), doc='All mask annotations of the image.'
      ),
  })
