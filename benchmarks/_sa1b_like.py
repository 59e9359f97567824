"""Synthetic SA-1B-like masks: blobby shapes of varied sizes, pycocotools RLE."""

from __future__ import annotations

import numpy as np


def blob_masks(rng: np.random.Generator, *, height: int, width: int,
               num_masks: int) -> np.ndarray:
  """Returns uint8 [N, H, W] masks: wobbly blobs, areas from ~0.01% to ~40%."""
  masks = np.zeros((num_masks, height, width), np.uint8)
  yy = np.arange(height)[:, None]
  xx = np.arange(width)[None, :]
  for n in range(num_masks):
    # Log-uniform radius: many small masks, a few large ones (as in SA-1B).
    radius = np.exp(rng.uniform(np.log(6), np.log(0.35 * min(height, width))))
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    ry, rx = radius * rng.uniform(0.5, 1.5, size=2)
    y0, y1 = int(max(cy - 2 * ry, 0)), int(min(cy + 2 * ry + 1, height))
    x0, x1 = int(max(cx - 2 * rx, 0)), int(min(cx + 2 * rx + 1, width))
    dy = (yy[y0:y1] - cy) / ry
    dx = (xx[:, x0:x1] - cx) / rx
    theta = np.arctan2(dy, dx)
    wobble = 1.0
    for k in range(2, 6):
      wobble = wobble + rng.uniform(0, 0.25 / k * 2) * np.cos(
          k * theta + rng.uniform(0, 2 * np.pi))
    inside = (dy * dy + dx * dx) < wobble ** 2
    if rng.random() < 0.3:  # Some masks with holes / several parts.
      hy, hx = rng.uniform(-0.5, 0.5, size=2)
      inside &= ((dy - hy) ** 2 + (dx - hx) ** 2) > 0.05
    masks[n, y0:y1, x0:x1] = inside
  return masks


def encode(masks: np.ndarray) -> list[dict]:
  from pycocotools import mask as mask_utils  # pylint: disable=g-import-not-at-top
  return mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
