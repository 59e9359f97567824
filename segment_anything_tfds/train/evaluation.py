"""Mask IoU of predictions against SA-1B ground truth: metric and evaluation.

The conventions, stated once:

* Ground truth is compared at a size you choose: decode it there with
  ``rle.decode(counts, size, output_size=...)`` (TF's nearest rule), or take
  the targets of `sam_inputs`, already at their mask size.
* Dense predictions (logits or probabilities, any resolution) are resized to
  the ground truth's size bilinearly, then thresholded: ``logits > 0``
  (``from_logits=True``) or ``probabilities > 0.5``; ``threshold=`` replaces
  0 / 0.5. RLE predictions are compared at their own size, which must be the
  ground truth's (``rle.iou``).
* IoU = |P ∩ G| / |P ∪ G| as float32, and 0 when P ∩ G is empty (also for
  two empty masks), as ``pycocotools.mask.iou``.
* SAM's multimask convention: predictions ``[..., C, h, w]`` (C candidates)
  for ground truth ``[..., H, W]``: the best candidate of each mask counts.
* The statistics are over ground-truth masks: the mean IoU and the fractions
  of masks with IoU >= 0.5 and >= 0.75 (`THRESHOLDS`).

`MaskIoU` is a ``keras.metrics.Metric`` (``model.compile(metrics=...)`` or
``update_state``/``result``). `mask_iou`, `best_candidate_iou` and
`rle_best_iou` are plain TF functions (eagerly, in tf.function, in tf.data).
`evaluate_predictions` scores pycocotools-style RLE predictions against a
dataset of examples, and `format_table` prints its result.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from segment_anything_tfds import errors
from segment_anything_tfds.prepare import records as examples
from segment_anything_tfds.read import rle
from segment_anything_tfds.train import SELECT

__all__ = ['THRESHOLDS', 'MaskIoU', 'binarize', 'resize_and_binarize',
           'mask_iou', 'best_candidate_iou', 'rle_best_iou', 'summarize',
           'parse_predictions', 'choose', 'evaluate_predictions',
           'format_table']

THRESHOLDS = (0.5, 0.75)


def binarize(pred: tf.Tensor, *, from_logits: bool = True,
             threshold: float | None = None) -> tf.Tensor:
  """bool: ``pred > threshold``; threshold 0 for logits, 0.5 for probs."""
  if threshold is None:
    threshold = 0.0 if from_logits else 0.5
  pred = tf.convert_to_tensor(pred)
  return pred > tf.cast(threshold, pred.dtype)


def resize_and_binarize(pred: tf.Tensor, size: Sequence[int] | tf.Tensor, *,
                        from_logits: bool = True,
                        threshold: float | None = None) -> tf.Tensor:
  """Bilinear resize of [..., h, w] scores to `size` (H, W), then `binarize`.

  Returns:
    bool [..., H, W].
  """
  pred = tf.convert_to_tensor(pred)
  if not pred.dtype.is_floating:
    pred = tf.cast(pred, tf.float32)
  if pred.shape.rank is None or pred.shape.rank < 2:
    raise ValueError(f'evaluation: predictions must be [..., h, w], got'
                     f' shape {pred.shape}.')
  size = tf.cast(tf.convert_to_tensor(size), tf.int32)
  static = tf.get_static_value(size)
  if static is None or list(static) != pred.shape[-2:].as_list():
    shape = tf.shape(pred)
    flat = tf.reshape(pred, tf.concat([[-1], shape[-2:], [1]], 0))
    flat = tf.image.resize(flat, size, method='bilinear')
    pred = tf.reshape(flat, tf.concat([shape[:-2], size], 0))
  return binarize(pred, from_logits=from_logits, threshold=threshold)


def mask_iou(pred: tf.Tensor, gt: tf.Tensor) -> tf.Tensor:
  """IoU of binary masks [..., H, W] (nonzero is 1; shapes broadcast).

  Returns:
    float32 [...]: intersection / union, 0 where the intersection is empty.
  """
  pred = tf.cast(pred, tf.bool)
  gt = tf.cast(gt, tf.bool)
  inter = tf.reduce_sum(tf.cast(tf.logical_and(pred, gt), tf.int64), [-2, -1])
  union = tf.reduce_sum(tf.cast(tf.logical_or(pred, gt), tf.int64), [-2, -1])
  return _ratio(inter, union)


def _ratio(inter: tf.Tensor, union: tf.Tensor) -> tf.Tensor:
  """float32 inter / union (computed in float64), 0 where inter == 0."""
  value = tf.cast(inter, tf.float64) / tf.cast(tf.maximum(union, 1),
                                               tf.float64)
  return tf.cast(tf.where(inter > 0, value, 0.0), tf.float32)


def best_candidate_iou(pred: tf.Tensor, gt: tf.Tensor, *,
                       from_logits: bool = True,
                       threshold: float | None = None) -> tf.Tensor:
  """IoU of dense predictions with ground-truth masks, best candidate.

  Args:
    pred: logits or probabilities [..., h, w] (one prediction per mask) or
      [..., C, h, w] (C candidates per mask), any resolution.
    gt: masks [..., H, W] (nonzero is 1) at the evaluation size.
    from_logits: whether `pred` holds logits (threshold 0) or probabilities
      (threshold 0.5).
    threshold: replaces that threshold.

  Returns:
    float32 [...]: each mask's IoU (its best candidate's).
  """
  pred = tf.convert_to_tensor(pred)
  gt = tf.convert_to_tensor(gt)
  if pred.shape.rank == gt.shape.rank + 1:
    candidates = True
  elif pred.shape.rank == gt.shape.rank:
    candidates = False
  else:
    raise ValueError(
        f'evaluation: predictions {pred.shape} must be [..., h, w] or'
        f' [..., C, h, w] for ground truth {gt.shape} = [..., H, W].')
  binary = resize_and_binarize(pred, tf.shape(gt)[-2:],
                               from_logits=from_logits, threshold=threshold)
  if not candidates:
    return mask_iou(binary, gt)
  ious = mask_iou(binary, tf.expand_dims(gt, -3))
  # No candidates at all: IoU 0.
  return tf.maximum(tf.reduce_max(ious, axis=-1), 0.0)


def rle_best_iou(pred_counts: Any, gt_counts: Any, size: Any, *,
                 gt_size: Any = None) -> tf.Tensor:
  """IoU of RLE predictions with their ground-truth masks, on runs.

  Args:
    pred_counts: string [N] (mask n predicts gt n) or [N, C] (C candidates).
    gt_counts: string [N].
    size: (height, width) of the predictions ([2] or [N * C, 2] equal rows).
    gt_size: of the ground truth, if given separately; it must be the same.

  Returns:
    float32 [N]: each gt mask's IoU with its (best) prediction, exactly
    ``pycocotools.mask.iou`` of the pair, in float32.
  """
  pred = tf.convert_to_tensor(pred_counts, tf.string)
  gt = tf.reshape(tf.convert_to_tensor(gt_counts, tf.string), [-1])
  if pred.shape.rank not in (1, 2):
    raise ValueError(f'evaluation: pred_counts must be [N] or [N, C], got'
                     f' shape {pred.shape}.')
  n = tf.size(gt)
  pred = tf.reshape(pred, tf.stack([n, -1]))  # [N, C]
  ious = rle.iou(tf.reshape(pred, [-1]), gt, size, gt_size=gt_size)
  # [N * C, N] -> each prediction with its own gt: [C, N].
  ious = tf.linalg.diag_part(tf.transpose(
      tf.reshape(ious, tf.stack([n, -1, n])), [1, 0, 2]))
  return tf.maximum(tf.reduce_max(ious, axis=0), 0.0)


def summarize(ious: Any, sample_weight: Any = None) -> dict[str, tf.Tensor]:
  """Mean IoU and fractions >= `THRESHOLDS`, weighted (0 weight: excluded).

  Returns:
    {'mean_iou', 'iou_ge_0.5', 'iou_ge_0.75', 'count'}: float64 scalars; the
    three statistics are 0 when the total weight is 0.
  """
  ious = tf.cast(tf.convert_to_tensor(ious), tf.float32)
  weights = _weights(ious, sample_weight)
  sums = _weighted_sums(ious, weights)
  return {name: total if name == 'count' else
          _safe_div(total, sums['count'])
          for name, total in sums.items()}


def _weights(ious: tf.Tensor, sample_weight: Any) -> tf.Tensor:
  if sample_weight is None:
    return tf.ones_like(ious, tf.float64)
  return tf.broadcast_to(tf.cast(sample_weight, tf.float64), tf.shape(ious))


def _weighted_sums(ious: tf.Tensor, weights: tf.Tensor) -> dict[str, Any]:
  """Weighted totals, in float64: count, IoU sum, counts above thresholds."""
  sums = {'count': tf.reduce_sum(weights),
          'mean_iou': tf.reduce_sum(weights * tf.cast(ious, tf.float64))}
  for t in THRESHOLDS:
    sums[f'iou_ge_{t}'] = tf.reduce_sum(
        tf.where(ious >= t, weights, tf.zeros_like(weights)))
  return sums


def _safe_div(total, count):
  return tf.where(count > 0, total / tf.maximum(count, 1e-300),
                  tf.zeros_like(total))


class MaskIoU(keras.metrics.Metric):
  """Mean mask IoU and the fractions of masks with IoU >= 0.5 and >= 0.75.

  ``update_state(y_true, y_pred, sample_weight)``: `y_true` are ground-truth
  masks [..., H, W] (e.g. `sam_inputs` targets [B, K, H, W]), `y_pred`
  logits or probabilities [..., h, w] or [..., C, h, w] at any resolution
  (see `best_candidate_iou`), `sample_weight` [...] (0 for padding masks).
  `update_ious` adds IoUs computed elsewhere (e.g. `rle_best_iou`).

  `result()` is a dict: ``{name: mean IoU, name + '_ge_0.5': fraction,
  name + '_ge_0.75': fraction}``; Keras logs each entry.

  In ``model.compile``, pass it as ``weighted_metrics=[MaskIoU()]`` so that
  the sample weights (0 for `sam_inputs`' padding masks) apply: Keras calls
  ``metrics=`` without them.
  """

  def __init__(self, from_logits: bool = True,
               threshold: float | None = None, name: str = 'mask_iou',
               dtype: Any = None):
    super().__init__(name=name, dtype=dtype)
    self.from_logits = from_logits
    self.threshold = threshold
    self._sums = {key: self.add_variable(shape=(), initializer='zeros',
                                         dtype='float64', name=key)
                  for key in ('count', 'mean_iou',
                              *[f'iou_ge_{t}' for t in THRESHOLDS])}

  def update_state(self, y_true, y_pred, sample_weight=None):
    ious = best_candidate_iou(y_pred, y_true, from_logits=self.from_logits,
                              threshold=self.threshold)
    self.update_ious(ious, sample_weight)

  def update_ious(self, ious, sample_weight=None):
    ious = tf.cast(tf.convert_to_tensor(ious), tf.float32)
    sums = _weighted_sums(ious, _weights(ious, sample_weight))
    for key, value in sums.items():
      self._sums[key].assign_add(value)

  def result(self):
    count = tf.convert_to_tensor(self._sums['count'])
    out = {self.name: _safe_div(tf.convert_to_tensor(self._sums['mean_iou']),
                                count)}
    for t in THRESHOLDS:
      out[f'{self.name}_ge_{t}'] = _safe_div(
          tf.convert_to_tensor(self._sums[f'iou_ge_{t}']), count)
    return out

  def reset_state(self):
    for variable in self._sums.values():
      variable.assign(tf.zeros_like(variable))

  def get_config(self):
    return {**super().get_config(), 'from_logits': self.from_logits,
            'threshold': self.threshold}


# --------------------------------------------------- predictions vs dataset




def _load_predictions(predictions: Any) -> list[Mapping[str, Any]]:
  if isinstance(predictions, (str, os.PathLike)):
    with open(predictions, 'rb') as f:
      predictions = json.load(f)
  if not isinstance(predictions, list):
    raise ValueError('evaluate_predictions: predictions must be a list of'
                     f' dicts (pycocotools RLE results), got'
                     f' {type(predictions).__name__}.')
  return predictions


_SCHEMA = ('{"segmentation": {"size": [h, w], "counts": str}, "image_id":'
           ' int, "id": int, "score"?: float}')


def _prediction_key(i: int, p: Any) -> tuple[int, int, bytes, tuple, float]:
  """(image_id, id, counts, size, score) of prediction i, or ValueError.

  Nothing is converted: ids and sizes must be integers (not a bool, a
  float such as 21.7, or a string such as "21"), the score a finite
  number; a wrong one is named, not truncated to something that matches.
  """
  try:
    seg = p['segmentation']
    fields = (p['image_id'], p['id'], seg['counts'], seg['size'])
  except (KeyError, TypeError, IndexError):
    raise ValueError(f'evaluate_predictions: prediction {i} is not'
                     f' {_SCHEMA}: {str(p)[:200]}') from None
  image_id, ann_id, counts, size = fields
  key = (_integer(i, 'image_id', image_id), _integer(i, 'id', ann_id),
         _counts(i, counts), _size(i, size), _score(i, p.get('score', 0.0)))
  _check_rle(i, *key[:4])
  return key


def _wrong(i: int, field: str, what: str, value: Any) -> ValueError:
  """The error of prediction i's `field`, which is not `what`."""
  return ValueError(f'evaluate_predictions: prediction {i}: {field} must be'
                    f' {what}, got {value!r:.80}')


def _is_integer(value: Any) -> bool:
  """An int or a numpy integer; not a bool, a float or a string."""
  return (isinstance(value, (int, np.integer))
          and not isinstance(value, bool))


def _integer(i: int, field: str, value: Any) -> int:
  if not _is_integer(value):
    raise _wrong(i, field, 'an integer', value)
  return int(value)


def _size(i: int, value: Any) -> tuple[int, int]:
  if isinstance(value, np.ndarray) and value.ndim == 1:
    value = list(value)  # As read from a dataset (numpy integers).
  if (not isinstance(value, (list, tuple)) or len(value) != 2
      or not all(map(_is_integer, value))):
    raise _wrong(i, 'segmentation.size', '[h, w], two integers', value)
  return int(value[0]), int(value[1])


def _counts(i: int, value: Any) -> bytes:
  if isinstance(value, str) and value.isascii():
    return value.encode('ascii')
  if isinstance(value, bytes):
    return value
  raise _wrong(i, 'segmentation.counts', 'an ASCII string', value)


def _score(i: int, value: Any) -> float:
  try:
    finite = (not isinstance(value, bool)
              and isinstance(value, (int, float, np.integer, np.floating))
              and math.isfinite(value))
  except OverflowError:  # An int past float64.
    finite = False
  if not finite:
    raise _wrong(i, 'score', 'a finite number', value)
  return float(value)


_NO_AREA = np.zeros(1, np.int64)


def _check_rle(i: int, image_id: int, ann_id: int, counts: bytes,
               size: tuple[int, int]) -> None:
  """Refuses an RLE that cannot decode to its size, as the build does.

  The check is the build's (`examples.check_counts`), so that no string
  reaches the TensorFlow decoder that it would refuse mid-evaluation.

  Raises:
    ValueError: naming prediction `i`, its image and mask ids, and what is
      wrong.
  """
  where = f'prediction {i} (image_id {image_id}, id {ann_id})'
  if not all(0 <= side < 2**63 for side in size):
    raise ValueError(f'evaluate_predictions: {where}: segmentation.size'
                     f' {list(size)} is not two int64 sides >= 0')
  try:
    examples.check_counts(np.array([counts.decode('latin-1')], object),
                          _NO_AREA, height=size[0], width=size[1],
                          where=('predictions', where))
  except errors.BadInputError as e:
    problem = e.detail.removeprefix('annotations[0].')
    raise ValueError(f'evaluate_predictions: {where}: {problem}') from None


def parse_predictions(predictions: Any
                      ) -> list[tuple[int, int, bytes, tuple[int, int], float]]:
  """(image_id, id, counts, size, score) of each prediction.

  Args:
    predictions: a list of pycocotools RLE results, or a JSON file's path
      (see `evaluate_predictions`).

  Raises:
    ValueError: naming the first malformed prediction.
  """
  return [_prediction_key(i, p)
          for i, p in enumerate(_load_predictions(predictions))]


def _gt_fields(example: Mapping[str, Any]) -> dict[str, tf.Tensor]:
  ann = example['annotations']
  return {'image_id': example['image']['image_id'], 'id': ann['id'],
          'counts': ann['segmentation']['counts'],
          'size': ann['segmentation']['size']}


def choose(candidates: list[tuple[int, float]], ious: np.ndarray,
           select: str) -> float:
  """IoU of the chosen candidate: best IoU, or highest score (first wins).

  Args:
    candidates: (row in `ious`, score) of each prediction of one mask.
    ious: the predictions' IoUs with that mask.
    select: 'best_iou' or 'score' (`SELECT`).
  """
  if select == 'best_iou':
    return max(float(ious[p]) for p, _ in candidates)
  best = max(range(len(candidates)), key=lambda c: (candidates[c][1], -c))
  return float(ious[candidates[best][0]])


def evaluate_predictions(predictions: Any, dataset: tf.data.Dataset, *,
                         select: str = 'best_iou',
                         progress: Any = None) -> dict[str, Any]:
  """Scores RLE predictions against the ground truth of a dataset.

  Args:
    predictions: a list of ``{"segmentation": {"size": [h, w], "counts":
      str}, "image_id": int, "id": int, "score"?: float}`` (pycocotools RLE
      results; ``id`` is the ground-truth annotation the mask predicts), or
      the path of a JSON file holding one.
    dataset: a tf.data dataset of `segment_anything` examples (the prepared
      split; ``image.image_id``, ``annotations.id`` and
      ``annotations.segmentation`` are read). Load it with
      ``decoders={'image': {'content': tfds.decode.SkipDecoding()}}`` so the
      images are not decoded.
    select: when several predictions have the same (image_id, id): the one
      with the best IoU ('best_iou', SAM's multimask convention) or the
      highest score ('score', the first on ties).
    progress: wraps the iterator over the examples, e.g. ``tqdm.tqdm``.

  Returns:
    {'num_gt_masks', 'num_predictions', 'num_matched_gt_masks',
    'gt_without_prediction', 'predictions_without_gt' (ints), 'mean_iou',
    'iou_ge_0.5', 'iou_ge_0.75' (over matched gt masks; None if none)}.

  Raises:
    ValueError: a malformed prediction, or one whose size is not its gt's.
  """
  if select not in SELECT:
    raise ValueError(f'evaluate_predictions: select must be one of {SELECT},'
                     f' got {select!r}.')
  parsed = parse_predictions(predictions)
  by_key: dict[tuple[int, int], list[int]] = {}
  for i, (image_id, ann_id, *_) in enumerate(parsed):
    by_key.setdefault((image_id, ann_id), []).append(i)

  ious, used, num_gt = [], set(), 0
  examples = dataset.map(_gt_fields).as_numpy_iterator()
  for gt in examples if progress is None else progress(examples):
    image_id = int(gt['image_id'])
    ann_ids = [int(v) for v in gt['id']]
    num_gt += len(ann_ids)
    ious += _image_ious(image_id, ann_ids, gt, parsed, by_key, used, select)
  return _table(ious, num_gt=num_gt, num_predictions=len(parsed),
                matched_predictions=len(used))


def _image_ious(image_id, ann_ids, gt, parsed, by_key, used, select):
  """Per matched gt mask of one image, the IoU of its chosen prediction."""
  pred_counts, owners = [], []  # owners: (gt index, [(row, score)]).
  for g, ann_id in enumerate(ann_ids):
    indices = by_key.get((image_id, ann_id), [])
    if not indices:
      continue
    gt_size = tuple(int(v) for v in gt['size'][g])
    rows = []
    for i in indices:
      _, _, counts, size, score = parsed[i]
      if size != gt_size:
        raise ValueError(
            f'evaluate_predictions: prediction {i} (image_id {image_id}, id'
            f' {ann_id}) has size {list(size)}, its ground truth'
            f' {list(gt_size)}.')
      rows.append((len(pred_counts), score))
      pred_counts.append(counts)
      used.add(i)
    owners.append((g, rows))
  if not owners:
    return []
  matrix = rle.iou(pred_counts, gt['counts'], gt_size,
                   gt_size=gt['size']).numpy()
  return [choose(rows, matrix[:, g], select) for g, rows in owners]


def _table(ious: list[float], *, num_gt: int, num_predictions: int,
           matched_predictions: int) -> dict[str, Any]:
  values = np.asarray(ious, np.float32)
  result = {'num_gt_masks': num_gt, 'num_predictions': num_predictions,
            'num_matched_gt_masks': len(ious),
            'gt_without_prediction': num_gt - len(ious),
            'predictions_without_gt': num_predictions - matched_predictions,
            'mean_iou': None}
  for t in THRESHOLDS:
    result[f'iou_ge_{t}'] = None
  if len(ious):
    result['mean_iou'] = float(np.mean(values.astype(np.float64)))
    for t in THRESHOLDS:
      result[f'iou_ge_{t}'] = float(np.mean(values >= t))
  return result


_ROWS = (('num_gt_masks', 'gt masks', 'd'),
         ('num_predictions', 'predictions', 'd'),
         ('num_matched_gt_masks', 'gt masks with a prediction', 'd'),
         ('gt_without_prediction', 'gt masks without a prediction', 'd'),
         ('predictions_without_gt', 'predictions without a gt mask', 'd'),
         ('mean_iou', 'mean IoU', '.4f'),
         *[(f'iou_ge_{t}', f'IoU >= {t}', '.2%') for t in THRESHOLDS])


def format_table(result: Mapping[str, Any]) -> str:
  """The `evaluate_predictions` result as an aligned two-column text table."""
  rows = []
  for key, label, fmt in _ROWS:
    value = result.get(key)
    text = 'n/a' if value is None or (isinstance(value, float) and
                                      math.isnan(value)) else format(value,
                                                                     fmt)
    rows.append((label, text))
  width = max(len(label) for label, _ in rows)
  value_width = max(len(text) for _, text in rows)
  return '\n'.join(f'{label:<{width}}  {text:>{value_width}}'
                   for label, text in rows)
