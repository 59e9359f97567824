"""Dataset statistics: masks per image, mask areas, quality scores, sizes.

`Accumulator` takes examples one at a time (numpy dicts, as from
`tfds.as_numpy` or `tfds.data_source`) and keeps memory bounded whatever the
dataset size:

* masks per image and image sizes are counted exactly (integer counters);
* mask area fraction, `predicted_iou` and `stability_score` go into
  fixed-bin histograms, with exact count, mean, min and max. Their quantiles
  are read off the histogram, so they are exact to one bin: 0.001 for the
  scores, 1/100 of a decade (≈2.3 %) for the area fraction.

`summary()` returns a JSON-ready dict; `figure()` draws it, `png_bytes()`
renders that as a PNG in memory, `write_json()` and `write_figure()` write
them whole (`export.write_file`: never through a link or FIFO there).
"""

from __future__ import annotations

import collections
import io
import json
import math
import os
from typing import Any, Mapping

import numpy as np

from segment_anything_tfds import errors
from segment_anything_tfds.tools import export

QUANTILES = (0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)
FIGURE_SIZE_PX = (1500, 900)  # width, height of the PNG `write_figure` saves.
_DPI = 100


class Histogram:
  """A fixed-bin histogram with exact count, sum, min and max.

  Values outside [lo, hi) are counted in the first or last bin; min and max
  stay exact. With `log=True` the bins are uniform in log10(value), and
  values <= 0 go to the first bin.
  """

  def __init__(self, lo: float, hi: float, bins: int, *, log: bool = False):
    self.log = log
    self.edges = (np.logspace(lo, hi, bins + 1) if log
                  else np.linspace(lo, hi, bins + 1))
    self.counts = np.zeros(bins, dtype=np.int64)
    self.n = 0
    self.total = 0.0
    self.min = math.inf
    self.max = -math.inf

  def add(self, values: np.ndarray) -> None:
    values = np.asarray(values, dtype=np.float64).ravel()
    if not values.size:
      return
    idx = np.searchsorted(self.edges, values, side='right') - 1
    np.clip(idx, 0, len(self.counts) - 1, out=idx)
    self.counts += np.bincount(idx, minlength=len(self.counts))
    self.n += values.size
    self.total += float(values.sum())
    self.min = min(self.min, float(values.min()))
    self.max = max(self.max, float(values.max()))

  def quantile(self, q: float) -> float | None:
    """The q-quantile, to one bin: the bin's centre, clamped to [min, max]."""
    if not self.n:
      return None
    if q <= 0:
      return self.min
    if q >= 1:
      return self.max
    cum = np.cumsum(self.counts)
    i = int(np.searchsorted(cum, q * self.n, side='left'))
    lo, hi = self.edges[i], self.edges[i + 1]
    centre = math.sqrt(lo * hi) if self.log else (lo + hi) / 2
    return float(min(max(centre, self.min), self.max))

  def summary(self) -> dict[str, Any]:
    return {
        'count': self.n,
        'mean': self.total / self.n if self.n else None,
        'min': self.min if self.n else None,
        'max': self.max if self.n else None,
        'quantiles': {f'{q:g}': self.quantile(q) for q in QUANTILES},
    }


def _exact_quantiles(counter: Mapping[int, int]) -> dict[str, int | None]:
  """Quantiles (lower, nearest-rank) of integer values given as counts."""
  n = sum(counter.values())
  out = {}
  for q in QUANTILES:
    if not n:
      out[f'{q:g}'] = None
      continue
    rank = max(1, math.ceil(q * n))
    seen = 0
    for value in sorted(counter):
      seen += counter[value]
      if seen >= rank:
        out[f'{q:g}'] = int(value)
        break
  return out


class Accumulator:
  """Streams examples into bounded-memory statistics."""

  def __init__(self):
    self.images = 0
    self.masks = 0
    self.masks_per_image: collections.Counter[int] = collections.Counter()
    self.image_sizes: collections.Counter[tuple[int, int]] = (
        collections.Counter())
    self.area_fraction = Histogram(-8, 0, 800, log=True)
    self.predicted_iou = Histogram(0.0, 1.1, 1100)
    self.stability_score = Histogram(0.0, 1.1, 1100)

  def add(self, example: Mapping[str, Any]) -> None:
    """Adds one example: a dict with `image` and `annotations` (numpy).

    Raises:
      BadRecordError: a score is NaN or infinite (`export.check_finite`),
        naming the example (its index among those added) and its image id.
    """
    image, ann = example['image'], example['annotations']
    height, width = int(image['height']), int(image['width'])
    num = len(ann['id'])
    try:  # Before anything is counted.
      export.check_finite(example, ('predicted_iou', 'stability_score'))
    except errors.BadRecordError as e:
      raise errors.BadRecordError(f'example {self.images}, {e.args[0]}'
                                  ) from None
    self.images += 1
    self.masks += num
    self.masks_per_image[num] += 1
    self.image_sizes[(height, width)] += 1
    if num:
      pixels = max(height * width, 1)
      self.area_fraction.add(np.asarray(ann['area'], np.float64) / pixels)
      self.predicted_iou.add(ann['predicted_iou'])
      self.stability_score.add(ann['stability_score'])

  def masks_histogram(self, max_bins: int = 50) -> dict[str, Any]:
    """Masks per image as {edges, counts}: integer bins, at most max_bins."""
    if not self.masks_per_image:
      return {'edges': [], 'counts': []}
    lo, hi = min(self.masks_per_image), max(self.masks_per_image)
    width = max(1, math.ceil((hi - lo + 1) / max_bins))
    edges = list(range(lo, hi + width + 1, width))
    counts = [0] * (len(edges) - 1)
    for value, count in self.masks_per_image.items():
      counts[(value - lo) // width] += count
    return {'edges': edges, 'counts': counts}

  def summary(self) -> dict[str, Any]:
    """Everything, as a JSON-serializable dict."""
    sizes = self.image_sizes
    heights = collections.Counter()
    widths = collections.Counter()
    for (h, w), c in sizes.items():
      heights[h] += c
      widths[w] += c
    return {
        'images': self.images,
        'masks': self.masks,
        'masks_per_image': {
            'mean': self.masks / self.images if self.images else None,
            'min': min(self.masks_per_image) if self.images else None,
            'max': max(self.masks_per_image) if self.images else None,
            'quantiles': _exact_quantiles(self.masks_per_image),
            'histogram': self.masks_histogram(),
        },
        'mask_area_fraction': self.area_fraction.summary(),
        'predicted_iou': self.predicted_iou.summary(),
        'stability_score': self.stability_score.summary(),
        'image_size': {
            'distinct_sizes': len(sizes),
            'most_common': [
                {'height': h, 'width': w, 'images': c}
                for (h, w), c in sizes.most_common(10)],
            'height': {'min': min(heights) if heights else None,
                       'max': max(heights) if heights else None,
                       'quantiles': _exact_quantiles(heights)},
            'width': {'min': min(widths) if widths else None,
                      'max': max(widths) if widths else None,
                      'quantiles': _exact_quantiles(widths)},
        },
    }

  def json_bytes(self, where: str, **extra: Any
                 ) -> tuple[dict[str, Any], bytes]:
    """(`summary()` plus `extra` keys, that dict as indented JSON).

    Raises:
      BadRecordError: the summary holds NaN or infinity (which JSON cannot
        hold), naming `where` (the file it is for) and the value.
    """
    out = {**extra, **self.summary()}
    try:
      text = json.dumps(out, indent=2, sort_keys=False, allow_nan=False)
    except ValueError:
      raise errors.BadRecordError(
          f'{where}: the statistics hold'
          f' {export.non_finite_path(out) or "a number"}, not finite (NaN'
          ' or infinity), which JSON cannot hold; not written') from None
    return out, (text + '\n').encode()

  def png_bytes(self, *, title: str = 'SA-1B statistics') -> bytes:
    """`figure()` as a PNG of FIGURE_SIZE_PX pixels, drawn in memory."""
    buf = io.BytesIO()
    self.figure(title=title).savefig(buf, format='png', dpi=_DPI)
    return buf.getvalue()

  def write_json(self, path, **extra: Any) -> dict[str, Any]:
    """Writes `json_bytes()` at `path`, whole (`export.write_file`);
    returns the dict; nothing is written if it holds NaN or infinity."""
    out, data = self.json_bytes(os.fspath(path), **extra)
    export.write_file(path, data, what='the statistics')
    return out

  def write_figure(self, path, *, title: str = 'SA-1B statistics') -> None:
    """Writes `png_bytes()` at `path`, whole (`export.write_file`)."""
    export.write_file(path, self.png_bytes(title=title),
                      what='the statistics')

  def figure(self, *, title: str = 'SA-1B statistics'):
    """A 2x3 panel matplotlib Figure (Agg canvas, no pyplot).

    Histograms of masks per image, mask area fraction, predicted_iou and
    stability_score (bars with edges, mean and median marked; SAM's
    automatic-mask-generator thresholds, `SAM_THRESHOLDS`, drawn on the
    scores), a 2-D histogram of image sizes, and the summary in text.
    """
    from matplotlib import figure as figure_lib  # pylint: disable=g-import-not-at-top
    from matplotlib.backends import backend_agg  # pylint: disable=g-import-not-at-top

    fig = figure_lib.Figure(
        figsize=(FIGURE_SIZE_PX[0] / _DPI, FIGURE_SIZE_PX[1] / _DPI), dpi=_DPI)
    backend_agg.FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    fig.suptitle(f'{title}: {self.images:,} images, {self.masks:,} masks')
    summary = self.summary()

    ax = axes[0, 0]
    hist = self.masks_histogram()
    if hist['counts']:
      _bars(ax, hist['counts'], [e - 0.5 for e in hist['edges']])
      mpi = summary['masks_per_image']
      _marks(ax, mpi['mean'], mpi['quantiles']['0.5'])
      ax.xaxis.set_major_locator(_integer_locator())
    ax.set(title='Masks per image', xlabel='masks in the image',
           ylabel='images')

    for ax, h, name, threshold in (
        (axes[0, 1], self.area_fraction, 'Mask area / image area', None),
        (axes[0, 2], self.predicted_iou, 'predicted_iou',
         SAM_THRESHOLDS['predicted_iou']),
        (axes[1, 0], self.stability_score, 'stability_score',
         SAM_THRESHOLDS['stability_score'])):
      if h.n:
        _plot_hist(ax, h)
        _marks(ax, h.total / h.n, h.quantile(0.5))
        if threshold is not None:
          ax.axvline(threshold, color='#c0392b', linewidth=1.6,
                     label=f"SAM's threshold {threshold:g}")
      ax.set(title=name, xlabel=name if threshold else 'fraction of the'
             ' image (log scale)', ylabel='masks')
    axes[0, 1].set_xscale('log')

    self._plot_sizes(fig, axes[1, 1])
    for ax in axes.flat[:5]:
      ax.yaxis.set_major_locator(_integer_locator())
      if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize='small', framealpha=0.8)

    ax = axes[1, 2]
    ax.axis('off')
    ax.text(0, 1, '\n'.join(_summary_lines(summary, self.images)),
            va='top', family='monospace', fontsize='small')
    fig.tight_layout()
    return fig

  def _plot_sizes(self, fig, ax) -> None:
    """Image sizes as a 2-D histogram (log colour scale), width x height."""
    ax.set(title='Image sizes (2-D histogram)', xlabel='width (px)',
           ylabel='height (px)')
    if not self.image_sizes:
      return
    from matplotlib import colors as colors_lib  # pylint: disable=g-import-not-at-top
    ws = np.array([w for _, w in self.image_sizes], np.float64)
    hs = np.array([h for h, _ in self.image_sizes], np.float64)
    counts = np.array(list(self.image_sizes.values()), np.float64)
    grid, x_edges, y_edges = np.histogram2d(
        ws, hs, bins=(_size_edges(ws), _size_edges(hs)), weights=counts)
    mesh = ax.pcolormesh(x_edges, y_edges,
                         np.ma.masked_equal(grid.T, 0), cmap='viridis',
                         norm=colors_lib.LogNorm(vmin=1,
                                                 vmax=max(grid.max(), 2)))
    for edges, set_lim in ((x_edges, ax.set_xlim), (y_edges, ax.set_ylim)):
      # A margin, so that cells on the border stay whole and visible.
      pad = max(edges[1] - edges[0], 0.04 * (edges[-1] - edges[0]))
      set_lim(edges[0] - pad, edges[-1] + pad)
    from matplotlib import ticker  # pylint: disable=g-import-not-at-top
    bar = fig.colorbar(mesh, ax=ax)
    bar.set_label('images')
    bar.ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    bar.ax.yaxis.set_minor_locator(ticker.NullLocator())
    bar.ax.yaxis.set_major_formatter(ticker.StrMethodFormatter('{x:,.0f}'))


# SAM's automatic mask generator keeps masks with predicted_iou >= 0.88 and
# stability_score >= 0.95 (its default pred_iou_thresh, stability_score_thresh).
SAM_THRESHOLDS = {'predicted_iou': 0.88, 'stability_score': 0.95}


def _integer_locator():
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  return ticker.MaxNLocator(integer=True)


def _bars(ax, counts, edges) -> None:
  """Bars spanning [edges[i], edges[i + 1]), with visible edges."""
  edges = np.asarray(edges, np.float64)
  ax.bar(edges[:-1], counts, width=np.diff(edges), align='edge',
         color='#4c72b0', edgecolor='#1f2f4f', linewidth=0.6)


def _marks(ax, mean: float | None, median: float | None) -> None:
  if mean is not None:
    ax.axvline(mean, color='#222222', linestyle='--', linewidth=1.2,
               label=f'mean {mean:.4g}')
  if median is not None:
    ax.axvline(median, color='#dd8452', linestyle=':', linewidth=1.8,
               label=f'median {median:.4g}')


def _size_edges(values: np.ndarray, max_bins: int = 30) -> np.ndarray:
  """Integer-aligned bin edges around `values`, at most `max_bins` bins."""
  lo, hi = float(values.min()), float(values.max())
  step = max(1, math.ceil((hi - lo + 1) / max_bins))
  bins = max(1, math.ceil((hi - lo + 1) / step))
  return lo - 0.5 + step * np.arange(bins + 1)


def _summary_lines(summary: Mapping[str, Any], images: int) -> list[str]:
  mpi = summary['masks_per_image']
  lines = [f'images: {summary["images"]:,}', f'masks: {summary["masks"]:,}']
  if not images:
    return lines
  lines.append(f'masks/image: mean {mpi["mean"]:.1f},'
               f' median {mpi["quantiles"]["0.5"]}')
  lines.append(f'  min {mpi["min"]}, max {mpi["max"]}')
  for key in ('predicted_iou', 'stability_score'):
    s = summary[key]
    if s['count']:
      lines.append(f'{key}: mean {s["mean"]:.3f}, median'
                   f' {s["quantiles"]["0.5"]:.3f}')
  sizes = summary['image_size']
  top = sizes['most_common'][0]
  lines.append(f'distinct image sizes: {sizes["distinct_sizes"]:,}')
  lines.append(f'  most common {top["width"]}x{top["height"]}'
               f' ({top["images"]:,} images)')
  return lines


def _plot_hist(ax, h: Histogram) -> None:
  """Plots the occupied range of `h`, merged to at most ~60 bars."""
  nz = np.nonzero(h.counts)[0]
  if not nz.size:
    return
  first, last = nz[0], nz[-1] + 1
  step = max(1, math.ceil((last - first) / 60))
  counts = [int(h.counts[i:i + step].sum()) for i in range(first, last, step)]
  edges = [h.edges[i] for i in range(first, last, step)]
  edges.append(h.edges[min(first + step * len(counts), len(h.edges) - 1)])
  _bars(ax, counts, edges)
