"""SA-1B-shaped fake data: tars, folders and a links file.

Used by `dummy_data/make_dummy_data.py` (tiny images for the repo) and by
`benchmarks/prepare.py` (full-size, ≈1500x2250 and ≈100 masks per image).
Masks are random blobs; their RLE `counts`, `area` and `bbox` come from
pycocotools, with SA-1B's inclusive-extent boxes (w and h one less than
pycocotools' toBbox).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from typing import Iterable, Sequence

import numpy as np

ROOT = 'root'  # Members at the tar root: `sa_1.jpg`.
DOT = 'dot'  # Members under `./`: `./sa_1.jpg`.
FOLDER = 'folder'  # Members in a folder: `sa_000002/sa_1.jpg`.
LAYOUTS = (ROOT, DOT, FOLDER)


def _mask_utils():
  try:
    from pycocotools import mask as mask_utils  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        'Making fake SA-1B data needs pycocotools: pip install'
        ' segment_anything_tfds[pycocotools]') from e
  return mask_utils


def random_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """A blob: the union of a few random ellipses, at least one pixel."""
  yy, xx = np.ogrid[:height, :width]
  mask = np.zeros((height, width), dtype=bool)
  scale = rng.choice([0.02, 0.08, 0.25, 0.5])
  for _ in range(rng.integers(1, 4)):
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    ry = max(0.6, rng.uniform(0.3, 1.0) * scale * height)
    rx = max(0.6, rng.uniform(0.3, 1.0) * scale * width)
    mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
  if not mask.any():
    mask[rng.integers(height), rng.integers(width)] = True
  return mask


def annotation(
    rng: np.random.Generator, mask: np.ndarray, ann_id: int
) -> dict:
  """An SA-1B annotation for `mask`, its fields computed by pycocotools."""
  mask_utils = _mask_utils()
  height, width = mask.shape
  rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
  x, y, w, h = (int(v) for v in mask_utils.toBbox(rle))
  ys, xs = np.nonzero(mask)
  k = rng.integers(len(ys))
  crop = [0, 0, width, height]
  if rng.random() < 0.3:
    cw, ch = width // 2, height // 2
    crop = [int(rng.integers(0, width - cw + 1)),
            int(rng.integers(0, height - ch + 1)), cw, ch]
  return {
      'bbox': [x, y, max(w - 1, 0), max(h - 1, 0)],
      'area': int(mask_utils.area(rle)),
      'segmentation': {'size': [height, width],
                       'counts': rle['counts'].decode('ascii')},
      'predicted_iou': float(rng.uniform(0.7, 1.0)),
      'point_coords': [[float(xs[k]) + 0.5, float(ys[k]) + 0.5]],
      'crop_box': crop,
      'id': ann_id,
      'stability_score': float(rng.uniform(0.8, 1.0)),
  }


def jpeg_bytes(rng: np.random.Generator, height: int, width: int, *,
               quality: int = 90) -> bytes:
  """A JPEG of smooth colour gradients plus noise."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  yy, xx = np.mgrid[:height, :width].astype(np.float32)
  base = np.stack([xx / max(width, 1), yy / max(height, 1),
                   (xx + yy) / max(width + height, 1)], axis=-1)
  noise = rng.normal(0, 0.08, size=(height, width, 3)).astype(np.float32)
  pixels = np.clip((base * rng.uniform(0.3, 1.0) + noise) * 255, 0, 255)
  buf = io.BytesIO()
  Image.fromarray(pixels.astype(np.uint8)).save(buf, format='JPEG',
                                                quality=quality)
  return buf.getvalue()


def image_record(
    rng: np.random.Generator, image_id: int, *, height: int, width: int,
    num_masks: int, need_backslash: bool = False,
) -> tuple[bytes, bytes]:
  """One image's (jpg bytes, json bytes), as SA-1B stores them.

  With `need_backslash`, masks are drawn until one RLE string holds a `\\`,
  which JSON escapes and which readers must keep byte for byte.
  """
  anns = []
  for i in range(num_masks):
    anns.append(annotation(rng, random_mask(rng, height, width),
                           image_id * 1000 + i))
  tries = 0
  while need_backslash and not any('\\' in a['segmentation']['counts']
                                   for a in anns):
    tries += 1
    if tries > 10000:
      raise RuntimeError('could not draw a mask whose counts hold a backslash')
    anns[-1] = annotation(rng, random_mask(rng, height, width),
                          image_id * 1000 + num_masks - 1)
  record = {
      'image': {'image_id': image_id, 'width': width, 'height': height,
                'file_name': f'sa_{image_id}.jpg'},
      'annotations': anns,
  }
  return jpeg_bytes(rng, height, width), json.dumps(record).encode()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  info.mtime = 1680000000
  info.mode = 0o644
  tar.addfile(info, io.BytesIO(data))


def member_name(layout: str, tar_stem: str, file_name: str) -> str:
  if layout == ROOT:
    return file_name
  if layout == DOT:
    return f'./{file_name}'
  if layout == FOLDER:
    return f'{tar_stem}/{file_name}'
  raise ValueError(f'unknown layout {layout!r}; expected one of {LAYOUTS}')


def write_tar(
    path: os.PathLike | str,
    records: Iterable[tuple[int, bytes, bytes]],
    *,
    layout: str = ROOT,
    rng: np.random.Generator | None = None,
) -> int:
  """Writes (image_id, jpg, json) records as an SA-1B tar; returns members.

  With `rng`, member order is shuffled so an image's jpg and json are not
  adjacent; records are then held until written (fine for tests; the
  benchmark passes records one tar at a time).
  """
  path = os.fspath(path)
  tar_stem = os.path.basename(path)[:-len('.tar')]
  members = []
  for image_id, jpg, js in records:
    members.append((member_name(layout, tar_stem, f'sa_{image_id}.jpg'), jpg))
    members.append((member_name(layout, tar_stem, f'sa_{image_id}.json'), js))
  if rng is not None:
    order = rng.permutation(len(members))
    members = [members[i] for i in order]
  tmp = path + '.tmp'
  with tarfile.open(tmp, 'w', format=tarfile.GNU_FORMAT) as tar:
    if layout == FOLDER:
      info = tarfile.TarInfo(tar_stem)
      info.type = tarfile.DIRTYPE
      info.mode = 0o755
      info.mtime = 1680000000
      tar.addfile(info)
    for name, data in members:
      _add(tar, name, data)
  os.replace(tmp, path)
  return len(members)


def write_folder(
    path: os.PathLike | str, records: Iterable[tuple[int, bytes, bytes]]
) -> None:
  """Writes records as an extracted `sa_NNNNNN/` folder."""
  os.makedirs(path, exist_ok=True)
  for image_id, jpg, js in records:
    with open(os.path.join(path, f'sa_{image_id}.jpg'), 'wb') as f:
      f.write(jpg)
    with open(os.path.join(path, f'sa_{image_id}.json'), 'wb') as f:
      f.write(js)


def write_links(
    path: os.PathLike | str, urls: Sequence[tuple[str, str]]
) -> None:
  """Writes a links file: header, then (file_name, url) rows."""
  with open(path, 'w') as f:
    f.write('file_name\tcdn_link\n')
    for name, url in urls:
      f.write(f'{name}\t{url}\n')
