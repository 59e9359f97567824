/* COCO compressed RLE in C: the build-time check and a low-resolution
 * decoder, over one parser; and, below them, the numpy path's image resize
 * (`resize_area`), TensorFlow's area kernel bit for bit.
 *
 * The format is stated in `read/rle.py`. `parse` reads it exactly as
 * pycocotools' `rleFrString` does, and stops at the first thing that keeps a
 * string from decoding to a height x width mask with `rle.decode`. Both
 * functions below use it, so they accept and refuse the same strings.
 *
 * first_bad(counts: list[str], height: int, width: int)
 *   -> None, or (index, code, value): the first bad string's index, what is
 *      wrong (the CODE_* values below), and a detail (the offending
 *      character's code point, the count's length in characters, or the
 *      runs' total).
 *   `prepare/records.check_counts` calls it for every image of a build:
 *   about 100 strings and 65-200 k characters. It is the one validator; its
 *   plain-Python reference, `records.first_bad_reference` (`first_problem`
 *   per string), is the tests' oracle and the fallback when this extension
 *   is not built. The two must agree on every input.
 *
 * decode(counts: list[bytes | str], height: int, width: int, rows, cols,
 *        out) -> None, or (index, code, value) as first_bad.
 *   Paints the masks straight at a low resolution, without the full mask:
 *   out[n, i, j] = mask n at pixel (rows[i], cols[j]). `rows` and `cols` are
 *   C-contiguous int64 buffers, non-decreasing, inside the mask (the
 *   sampled rows and columns: `rle.nearest_indices`' rule, computed by the
 *   caller); `out` is a writable uint8 or float32 buffer of shape
 *   [len(counts), len(rows), len(cols)], any strides, all zeros: only the
 *   ones are written. The cost is the number of runs plus the ones written.
 *   `read/numpy_inputs.decode_masks_np` calls it.
 *
 * All arithmetic is unsigned or checked: no input can overflow or shift a
 * negative value (both undefined in C), and nothing is written outside
 * `out`.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <string.h>

enum {
  CODE_EMPTY = 1,       /* value: 0 (no runs, and h*w > 0) */
  CODE_CHARACTER = 2,   /* value: the code point outside '0'..'o' */
  CODE_UNFINISHED = 3,  /* value: 0 */
  CODE_TOO_LONG = 4,    /* value: characters in the count */
  CODE_NEGATIVE = 5,    /* value: 0 */
  CODE_TOTAL = 6,       /* value: the runs' total, up to the first run past
                           h*w (saturating at 2**64 - 1) */
  CODE_NOT_TEXT = 7,    /* value: 0 */
  CODE_SIZE = 8,        /* value: 0; reported for string 0 */
};

#define MAX_CHARS_PER_COUNT 8
/* rle.decode's size rule: height and width at most 2**62, and
 * (height + 1) * (width + 1) at most 2**63 - 1 (int64 pixel indices). */
#define MAX_SIDE (1ULL << 62)
#define MAX_INDEX 0x7fffffffffffffffULL

/* `parse` is written once and inlined into callers that pass a constant
 * string kind and painter, which the compiler then folds away. */
#if defined(__GNUC__) || defined(__clang__)
#define INLINE static inline __attribute__((always_inline))
#define LIKELY(x) __builtin_expect(!!(x), 1)
#else
#define INLINE static inline
#define LIKELY(x) (x)
#endif

static PyObject *bad(Py_ssize_t index, int code, unsigned long long value) {
  return Py_BuildValue("(niK)", index, code, value);
}

/* A side as an unsigned value; *fits = 0 when it is negative or over
 * MAX_SIDE. Returns -1 with an exception set if it is not an integer. */
static int side(PyObject *obj, unsigned long long *out, int *fits) {
  PyObject *index = PyNumber_Index(obj);
  if (index == NULL) return -1;
  int overflow = 0;
  long long v = PyLong_AsLongLongAndOverflow(index, &overflow);
  Py_DECREF(index);
  if (v == -1 && PyErr_Occurred()) return -1;
  if (overflow != 0 || v < 0 || (unsigned long long)v > MAX_SIDE) {
    *fits = 0;
    return 0;
  }
  *out = (unsigned long long)v;
  return 0;
}

/* (height, width, pixels) from Python sides; *fits = 0 when the size breaks
 * rle.decode's rule. Returns -1 with an exception set on a non-integer. */
static int size_of(PyObject *height_obj, PyObject *width_obj,
                   unsigned long long *height, unsigned long long *width,
                   int *fits) {
  *height = *width = 0;
  *fits = 1;
  if (side(height_obj, height, fits) < 0) return -1;
  if (side(width_obj, width, fits) < 0) return -1;
  if (*fits && *height + 1 > MAX_INDEX / (*width + 1)) *fits = 0;
  return 0;
}

/* ------------------------------------------------------------ painting */

/* Where `decode` writes the 1-runs of one mask. */
typedef struct {
  char *base;              /* out[n, 0, 0] */
  Py_ssize_t row_stride;   /* bytes between out[n, i, j] and out[n, i+1, j] */
  Py_ssize_t col_stride;   /* bytes between out[n, i, j] and out[n, i, j+1] */
  int is_float;            /* float32 1.0, else uint8 1 */
  const long long *rows;   /* sampled source rows, non-decreasing */
  Py_ssize_t out_h;
  const long long *cols;   /* sampled source columns, non-decreasing */
  Py_ssize_t out_w;
  unsigned long long height;
  Py_ssize_t next_col;     /* no column before it samples the runs to come */
} Painter;

/* The first index i in [0, n) with a[i] >= x, or n. */
static Py_ssize_t lower_bound(const long long *a, Py_ssize_t n,
                              unsigned long long x) {
  Py_ssize_t lo = 0, hi = n;
  while (lo < hi) {
    Py_ssize_t mid = lo + (hi - lo) / 2;
    if ((unsigned long long)a[mid] < x)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/* Writes the 1-run of column-major pixels [start, end) (start < end <= h*w,
 * h > 0): every output pixel whose sampled source pixel lies in it. Runs
 * come in increasing order, so `next_col` only moves forward. */
static void paint(Painter *pt, unsigned long long start,
                  unsigned long long end) {
  const unsigned long long h = pt->height;
  const unsigned long long first_col = start / h, last_col = (end - 1) / h;
  Py_ssize_t j = pt->next_col;
  while (j < pt->out_w && (unsigned long long)pt->cols[j] < first_col) j++;
  pt->next_col = j;
  for (; j < pt->out_w && (unsigned long long)pt->cols[j] <= last_col; j++) {
    unsigned long long col = (unsigned long long)pt->cols[j];
    unsigned long long top = col == first_col ? start - first_col * h : 0;
    unsigned long long bottom = col == last_col ? end - last_col * h : h;
    Py_ssize_t i = lower_bound(pt->rows, pt->out_h, top);
    Py_ssize_t stop = lower_bound(pt->rows, pt->out_h, bottom);
    char *p = pt->base + i * pt->row_stride + j * pt->col_stride;
    if (pt->is_float) {
      const float one = 1.0f;
      for (; i < stop; i++, p += pt->row_stride) memcpy(p, &one, sizeof one);
    } else {
      for (; i < stop; i++, p += pt->row_stride) *p = 1;
    }
  }
}

/* ------------------------------------------------------------- parsing */

/* The code of what stops a string of `len` >= 1 code points decoding to a
 * mask of `pixels` pixels, or 0; its detail in *value. With a painter, the
 * mask's 1-runs are painted as they are read (each one checked first). */
INLINE int parse(int kind, const void *data, Py_ssize_t len,
                 unsigned long long pixels, unsigned long long *value,
                 Painter *painter) {
  /* Every run so far is in [0, pixels], and so is their total. */
  unsigned long long total = 0, before_last = 0, last = 0;
  Py_ssize_t m = 0, p = 0;
  *value = 0;
  while (p < len) {
    unsigned long long x = 0;
    Py_UCS4 c;
    int k = 0;
    for (;;) {
      if (p >= len) return CODE_UNFINISHED;
      c = PyUnicode_READ(kind, data, p);
      if (c - 48 > 63) { /* Unsigned: also below '0'. */
        *value = c;
        return CODE_CHARACTER;
      }
      c -= 48;
      if (k == MAX_CHARS_PER_COUNT) {
        /* Count the rest of this count's characters, for the message. */
        unsigned long long chars = k;
        while (p < len) {
          c = PyUnicode_READ(kind, data, p);
          if (c < 48 + 32 || c > 111) break;
          p++, chars++;
        }
        *value = chars + 1;
        return CODE_TOO_LONG;
      }
      x |= (unsigned long long)(c & 0x1f) << (5 * k);
      p++;
      k++;
      if (!(c & 0x20)) break;
    }
    /* The count is x - 2**(5k) when negative: |count| <= 2**40. */
    const int negative = (c & 0x10) != 0;
    unsigned long long size = negative ? (1ULL << (5 * k)) - x : x;
    unsigned long long base = m > 2 ? before_last : 0; /* m >= 3: deltas. */
    if (negative && size > base) return CODE_NEGATIVE;
    unsigned long long run = negative ? base - size : base + size;
    if (run > pixels - total) { /* Past h*w: it cannot come back down. */
      *value = run > ~0ULL - total ? ~0ULL : total + run;
      return CODE_TOTAL;
    }
    if (painter != NULL && (m & 1) && run > 0)
      paint(painter, total, total + run);
    total += run;
    before_last = last;
    last = run;
    m++;
  }
  *value = total;
  return total == pixels ? 0 : CODE_TOTAL;
}

/* The next count of a string of one-byte characters, as an unsigned
 * 64-bit value (a negative count wraps around); 0 on anything `parse`
 * refuses in it. */
INLINE int next_count(const unsigned char *s, Py_ssize_t len, Py_ssize_t *at,
                      unsigned long long *count) {
  Py_ssize_t p = *at;
  unsigned int c = (unsigned int)s[p++] - 48;
  if (LIKELY(c < 32)) { /* One character, sign-extended from bit 0x10. */
    *count = (unsigned long long)((long long)(c ^ 16) - 16);
    *at = p;
    return 1;
  }
  if (c > 63) return 0;
  unsigned long long x = c & 0x1f;
  int k = 1;
  do {
    if (p >= len || k == MAX_CHARS_PER_COUNT) return 0;
    c = (unsigned int)s[p++] - 48;
    if (c > 63) return 0;
    x |= (unsigned long long)(c & 0x1f) << (5 * k++);
  } while (c & 0x20);
  *count = c & 0x10 ? x - (1ULL << (5 * k)) : x;
  *at = p;
  return 1;
}

/* Whether a string of `len` >= 1 one-byte characters decodes to a mask of
 * `pixels` pixels: `parse`'s verdict without its detail, faster. SA-1B's
 * counts are mostly one character: a run two counts back plus -16..15.
 * Such a count takes a short path, and one check catches both a negative
 * run (it wraps past 2**63 > pixels) and a total past h*w. Whatever is
 * wrong, `parse` then says what. */
INLINE int valid_fast(const unsigned char *s, Py_ssize_t len,
                      unsigned long long pixels, Painter *painter) {
  unsigned long long total, before_last = 0, last = 0, run;
  Py_ssize_t p = 0;
  /* Count 0 is the first run. From count 3 on, a count is a delta against
   * the run two counts back; `last` stays 0 after count 0 so that counts 1
   * and 2 add to 0. */
  if (!next_count(s, len, &p, &run) || run > pixels) return 0;
  total = run;
  for (int odd = 1; p < len; odd ^= 1) {
    if (!next_count(s, len, &p, &run)) return 0;
    run += before_last;
    if (run > pixels - total) return 0;
    if (painter != NULL && odd && run > 0)
      paint(painter, total, total + run);
    total += run;
    before_last = last;
    last = run;
  }
  return total == pixels;
}

/* `parse` for a string of any kind: one specialized loop per kind. */
static int parse_any(int kind, const void *data, Py_ssize_t len,
                     unsigned long long pixels, unsigned long long *value,
                     Painter *painter) {
  *value = 0;
  if (len == 0) /* No runs: right for an empty mask only. */
    return pixels > 0 ? CODE_EMPTY : 0;
  switch (kind) {
    case PyUnicode_1BYTE_KIND:
      if (painter == NULL ? valid_fast(data, len, pixels, NULL)
                          : valid_fast(data, len, pixels, painter))
        return 0;
      /* Painting again is harmless: the same ones. */
      return parse(PyUnicode_1BYTE_KIND, data, len, pixels, value, painter);
    case PyUnicode_2BYTE_KIND:
      return parse(PyUnicode_2BYTE_KIND, data, len, pixels, value, painter);
    default:
      return parse(PyUnicode_4BYTE_KIND, data, len, pixels, value, painter);
  }
}

/* The kind, data and length of a str (code points, never an encoding: a
 * lone surrogate is a character outside '0'..'o' like any other), or, with
 * `bytes_too`, of bytes (one byte, one character). Returns 1 if `item` is
 * neither, -1 with an exception set on failure. */
static int text_of(PyObject *item, int bytes_too, int *kind,
                   const void **data, Py_ssize_t *len) {
  if (bytes_too && PyBytes_Check(item)) {
    *kind = PyUnicode_1BYTE_KIND;
    *data = PyBytes_AS_STRING(item);
    *len = PyBytes_GET_SIZE(item);
    return 0;
  }
  if (!PyUnicode_Check(item)) return 1;
#if PY_VERSION_HEX < 0x030C0000
  if (PyUnicode_READY(item) < 0) return -1;
#endif
  *kind = PyUnicode_KIND(item);
  *data = PyUnicode_DATA(item);
  *len = PyUnicode_GET_LENGTH(item);
  return 0;
}

/* Parses every string of `seq` (painting mask i with painters[i] if given);
 * sets *result to the first bad one's (index, code, value), or leaves it
 * NULL. Returns -1 with an exception set on failure. */
static int parse_all(PyObject *seq, int bytes_too, int fits,
                     unsigned long long pixels, Painter *painter,
                     Py_ssize_t mask_stride, PyObject **result) {
  Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  PyObject **items = PySequence_Fast_ITEMS(seq);
  *result = NULL;
  if (n > 0 && !fits) {
    *result = bad(0, CODE_SIZE, 0);
    return *result == NULL ? -1 : 0;
  }
  for (Py_ssize_t i = 0; i < n; i++) {
    int kind = 0;
    const void *data = NULL;
    Py_ssize_t len = 0;
    int not_text = text_of(items[i], bytes_too, &kind, &data, &len);
    if (not_text < 0) return -1;
    unsigned long long value = 0;
    int code = CODE_NOT_TEXT;
    if (!not_text) {
      if (painter != NULL) painter->next_col = 0;
      code = parse_any(kind, data, len, pixels, &value, painter);
      if (painter != NULL) painter->base += mask_stride;
    }
    if (code != 0) {
      *result = bad(i, code, value);
      return *result == NULL ? -1 : 0;
    }
  }
  return 0;
}

static PyObject *first_bad(PyObject *self, PyObject *args) {
  PyObject *counts, *height_obj, *width_obj;
  (void)self;
  if (!PyArg_ParseTuple(args, "OOO", &counts, &height_obj, &width_obj))
    return NULL;
  unsigned long long height, width;
  int fits;
  if (size_of(height_obj, width_obj, &height, &width, &fits) < 0) return NULL;
  PyObject *seq = PySequence_Fast(counts, "counts must be a sequence");
  if (seq == NULL) return NULL;
  PyObject *result = NULL;
  int status = parse_all(seq, 0, fits, height * width, NULL, 0, &result);
  Py_DECREF(seq);
  if (status < 0) return NULL;
  if (result == NULL) Py_RETURN_NONE;
  return result;
}

/* ------------------------------------------------------------ decoding */

/* A buffer's struct format without its native byte-order prefix ('B' when
 * the exporter gives none, as the buffer protocol says). */
static const char *buffer_format(const Py_buffer *view) {
  const char *f = view->format != NULL ? view->format : "B";
  if (f[0] == '@' || f[0] == '=' || f[0] == '<') f++;
  return f;
}

/* A C-contiguous 1-D int64 buffer. */
static int indices(PyObject *obj, Py_buffer *view, const char *what) {
  if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
    return -1;
  const char *f = buffer_format(view);
  if (view->ndim != 1 || view->itemsize != 8 ||
      (strcmp(f, "q") != 0 && strcmp(f, "l") != 0)) {
    PyErr_Format(PyExc_ValueError, "_rle.decode: %s must be a 1-D int64"
                 " array", what);
    PyBuffer_Release(view);
    return -1;
  }
  return 0;
}

/* Whether indices are non-decreasing and in [0, limit); sets an error if
 * not. */
static int inside(const Py_buffer *view, unsigned long long limit,
                  const char *what) {
  const long long *v = (const long long *)view->buf;
  for (Py_ssize_t i = 0; i < view->shape[0]; i++) {
    if (v[i] < 0 || (unsigned long long)v[i] >= limit ||
        (i > 0 && v[i] < v[i - 1])) {
      PyErr_Format(PyExc_ValueError, "_rle.decode: %s must be non-decreasing"
                   " indices inside the mask", what);
      return 0;
    }
  }
  return 1;
}

static PyObject *decode(PyObject *self, PyObject *args) {
  PyObject *counts, *height_obj, *width_obj, *rows_obj, *cols_obj, *out_obj;
  (void)self;
  if (!PyArg_ParseTuple(args, "OOOOOO", &counts, &height_obj, &width_obj,
                        &rows_obj, &cols_obj, &out_obj))
    return NULL;
  unsigned long long height, width;
  int fits;
  if (size_of(height_obj, width_obj, &height, &width, &fits) < 0) return NULL;
  PyObject *seq = PySequence_Fast(counts, "counts must be a sequence");
  if (seq == NULL) return NULL;
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  Py_buffer rows = {0}, cols = {0}, out = {0};
  int have_rows = 0, have_cols = 0, have_out = 0;
  PyObject *result = NULL;
  int status = -1;
  if (indices(rows_obj, &rows, "rows") < 0) goto done;
  have_rows = 1;
  if (indices(cols_obj, &cols, "cols") < 0) goto done;
  have_cols = 1;
  if (PyObject_GetBuffer(out_obj, &out, PyBUF_RECORDS) < 0) goto done;
  have_out = 1;
  const char *f = buffer_format(&out);
  const int is_float = strcmp(f, "f") == 0 && out.itemsize == 4;
  if (!is_float && !(strcmp(f, "B") == 0 && out.itemsize == 1)) {
    PyErr_SetString(PyExc_ValueError,
                    "_rle.decode: out must be a uint8 or float32 array");
    goto done;
  }
  if (out.ndim != 3 || out.shape[0] != n || out.shape[1] != rows.shape[0] ||
      out.shape[2] != cols.shape[0]) {
    PyErr_SetString(PyExc_ValueError, "_rle.decode: out must have the shape"
                    " [len(counts), len(rows), len(cols)]");
    goto done;
  }
  const unsigned long long pixels = fits ? height * width : 0;
  if (n == 0 || !fits || rows.shape[0] == 0 || cols.shape[0] == 0) {
    /* Nothing to paint: the strings' (or the size's) verdict. */
    status = parse_all(seq, 1, fits, pixels, NULL, 0, &result);
    goto done;
  }
  if (pixels == 0) {
    PyErr_SetString(PyExc_ValueError, "_rle.decode: an empty mask has no"
                    " pixels to sample");
    goto done;
  }
  if (!inside(&rows, height, "rows") || !inside(&cols, width, "cols"))
    goto done;
  Painter painter = {
      .base = (char *)out.buf, .row_stride = out.strides[1],
      .col_stride = out.strides[2], .is_float = is_float,
      .rows = (const long long *)rows.buf, .out_h = rows.shape[0],
      .cols = (const long long *)cols.buf, .out_w = cols.shape[0],
      .height = height, .next_col = 0};
  status = parse_all(seq, 1, fits, pixels, &painter, out.strides[0],
                     &result);
done:
  if (have_out) PyBuffer_Release(&out);
  if (have_cols) PyBuffer_Release(&cols);
  if (have_rows) PyBuffer_Release(&rows);
  Py_DECREF(seq);
  if (status < 0) return NULL;
  if (result == NULL) Py_RETURN_NONE;
  return result;
}

/* ------------------------------------------------------------ resize_area
 *
 * resize_area(image, out) -> None
 *   `image`: C-contiguous uint8 [h, w, c]; `out`: C-contiguous, writable
 *   float32 [out_h, out_w, c], all sides > 0. Writes TensorFlow's area
 *   resize (``tf.image.resize(image, (out_h, out_w), method='area')``, the
 *   ResizeArea kernel without align_corners) bit for bit: each output pixel
 *   is the mean of the source pixels under its footprint, weighted by the
 *   part of each that it covers, with the kernel's float32 arithmetic in the
 *   kernel's order (so the extension is built with -ffp-contract=off: no
 *   fused multiply-adds). The numpy path's image resize
 *   (`read/numpy_inputs.resize_area_np`), the twin of the tf.data path's.
 */

typedef struct {
  long long start, end;       /* source columns [start, end), unbounded */
  float start_scale, end_scale;
} Span;

/* The part of source cell v covered by [lo, hi), as the kernel writes it. */
static float covered(long long v, float lo, float hi, float scale) {
  if ((float)v < lo) return (float)(v + 1) > hi ? scale : (float)(v + 1) - lo;
  return (float)(v + 1) > hi ? hi - (float)v : 1.0f;
}

static long long clamp_index(long long v, long long size) {
  return v < 0 ? 0 : (v >= size ? size - 1 : v);
}

static int image_buffer(PyObject *obj, Py_buffer *view, int writable,
                        const char *format, const char *what) {
  int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE
                                                             : 0);
  if (PyObject_GetBuffer(obj, view, flags) < 0) return -1;
  const char *f = buffer_format(view);
  if (view->ndim != 3 || strcmp(f, format) != 0 || view->shape[0] <= 0 ||
      view->shape[1] <= 0 || view->shape[2] <= 0) {
    PyErr_Format(PyExc_ValueError, "_rle.resize_area: %s", what);
    PyBuffer_Release(view);
    return -1;
  }
  return 0;
}

static PyObject *resize_area(PyObject *self, PyObject *args) {
  PyObject *image_obj, *out_obj;
  (void)self;
  if (!PyArg_ParseTuple(args, "OO", &image_obj, &out_obj)) return NULL;
  Py_buffer in = {0}, out = {0};
  if (image_buffer(image_obj, &in, 0, "B",
                   "image must be a C-contiguous uint8 [h, w, c] array") < 0)
    return NULL;
  if (image_buffer(out_obj, &out, 1, "f", "out must be a C-contiguous,"
                   " writable float32 [h, w, c] array") < 0) {
    PyBuffer_Release(&in);
    return NULL;
  }
  const long long in_h = in.shape[0], in_w = in.shape[1], c = in.shape[2];
  const long long out_h = out.shape[0], out_w = out.shape[1];
  const char *in_start = (const char *)in.buf, *out_start = (char *)out.buf;
  const int overlap = in_start < out_start + out.len &&
                      out_start < in_start + in.len;
  if (out.shape[2] != c || overlap) {
    PyErr_SetString(PyExc_ValueError, overlap ?
                    "_rle.resize_area: image and out must not share memory"
                    : "_rle.resize_area: image and out must have the same"
                    " channels");
    PyBuffer_Release(&out);
    PyBuffer_Release(&in);
    return NULL;
  }
  const float height_scale = (float)in_h / (float)out_h;
  const float width_scale = (float)in_w / (float)out_w;
  /* The most source rows under one output row: the float32 footprints may
   * reach past the image (then the last row counts again, as in TF). */
  long long max_rows = 1;
  for (long long y = 0; y < out_h; y++) {
    const long long rows = (long long)ceilf((float)(y + 1) * height_scale) -
                           (long long)floorf((float)y * height_scale);
    if (rows > max_rows) max_rows = rows;
  }
  Span *spans = PyMem_Malloc(sizeof(Span) * (size_t)out_w);
  float *row_scales = PyMem_Malloc(sizeof(float) * (size_t)max_rows);
  const unsigned char **row_ptrs =
      PyMem_Malloc(sizeof(unsigned char *) * (size_t)max_rows);
  if (spans == NULL || row_scales == NULL || row_ptrs == NULL) {
    PyMem_Free(spans);
    PyMem_Free(row_scales);
    PyMem_Free(row_ptrs);
    PyBuffer_Release(&out);
    PyBuffer_Release(&in);
    return PyErr_NoMemory();
  }
  const unsigned char *pixels = (const unsigned char *)in.buf;
  float *dst = (float *)out.buf;
  Py_BEGIN_ALLOW_THREADS
  const float scale = (float)(1.0 / (double)(height_scale * width_scale));
  for (long long x = 0; x < out_w; x++) {
    const float lo = (float)x * width_scale, hi = (float)(x + 1) * width_scale;
    Span *s = &spans[x];
    s->start = (long long)floorf(lo);
    s->end = (long long)ceilf(hi);
    s->start_scale = covered(s->start, lo, hi, width_scale);
    s->end_scale = covered(s->end - 1, lo, hi, width_scale);
  }
  for (long long y = 0; y < out_h; y++) {
    const float lo = (float)y * height_scale;
    const float hi = (float)(y + 1) * height_scale;
    const long long y_start = (long long)floorf(lo);
    const long long y_end = (long long)ceilf(hi);
    long long rows = 0;
    for (long long i = y_start; i < y_end && rows < max_rows; i++, rows++) {
      row_scales[rows] = covered(i, lo, hi, height_scale);
      row_ptrs[rows] = pixels + clamp_index(i, in_h) * in_w * c;
    }
    for (long long x = 0; c == 3 && x < out_w; x++) {
      /* RGB: the three channels side by side, each summed in the same
       * order as below. */
      const Span *s = &spans[x];
      const long long first = clamp_index(s->start, in_w) * 3;
      const long long last = clamp_index(s->end - 1, in_w) * 3;
      float sum0 = 0.0f, sum1 = 0.0f, sum2 = 0.0f;
      for (long long r = 0; r < rows; r++) {
        const unsigned char *p = row_ptrs[r];
        float y0 = (float)p[first] * s->start_scale;
        float y1 = (float)p[first + 1] * s->start_scale;
        float y2 = (float)p[first + 2] * s->start_scale;
        if (s->start + 1 != s->end) {
          for (long long v = s->start + 1; v < s->end - 1; v++) {
            const unsigned char *q = p + clamp_index(v, in_w) * 3;
            y0 += (float)q[0];
            y1 += (float)q[1];
            y2 += (float)q[2];
          }
          y0 += (float)p[last] * s->end_scale;
          y1 += (float)p[last + 1] * s->end_scale;
          y2 += (float)p[last + 2] * s->end_scale;
        }
        sum0 += y0 * row_scales[r];
        sum1 += y1 * row_scales[r];
        sum2 += y2 * row_scales[r];
      }
      dst[0] = sum0 * scale;
      dst[1] = sum1 * scale;
      dst[2] = sum2 * scale;
      dst += 3;
    }
    for (long long x = 0; c != 3 && x < out_w; x++) {
      const Span *s = &spans[x];
      const long long first = clamp_index(s->start, in_w) * c;
      const long long last = clamp_index(s->end - 1, in_w) * c;
      for (long long ch = 0; ch < c; ch++) {
        float sum = 0.0f;
        for (long long r = 0; r < rows; r++) {
          const unsigned char *p = row_ptrs[r];
          float sum_y = (float)p[first + ch] * s->start_scale;
          if (s->start + 1 != s->end) {
            for (long long v = s->start + 1; v < s->end - 1; v++)
              sum_y += (float)p[clamp_index(v, in_w) * c + ch];
            sum_y += (float)p[last + ch] * s->end_scale;
          }
          sum += sum_y * row_scales[r];
        }
        *dst++ = sum * scale;
      }
    }
  }
  Py_END_ALLOW_THREADS
  PyMem_Free(spans);
  PyMem_Free(row_scales);
  PyMem_Free(row_ptrs);
  PyBuffer_Release(&out);
  PyBuffer_Release(&in);
  Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"first_bad", first_bad, METH_VARARGS,
     "first_bad(counts, height, width) -> None or (index, code, value)"},
    {"decode", decode, METH_VARARGS,
     "decode(counts, height, width, rows, cols, out) -> None or (index, code,"
     " value)"},
    {"resize_area", resize_area, METH_VARARGS,
     "resize_area(image, out) -> None: TensorFlow's area resize"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_rle",
    "COCO compressed RLE in C: the build-time check (first_bad) and a"
    " low-resolution decoder (decode); and the numpy path's image resize"
    " (resize_area).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__rle(void) { return PyModule_Create(&module); }
