/* Build-time check of COCO compressed RLE strings, in one pass of C.
 *
 * `examples.check_counts` calls `first_bad(counts, height, width)` for every
 * image of a build: about 100 strings and 65-200 k characters. The format is
 * stated in `rle.py`; this parses it exactly as pycocotools' `rleFrString`
 * does, and stops at the first string that cannot decode to a height x width
 * mask with `rle.decode`. It is the one validator; its plain-Python
 * reference, `examples.first_bad_reference` (`first_problem` per string), is
 * the tests' oracle and the fallback when this extension is not built. The
 * two must agree on every input.
 *
 * All arithmetic is unsigned or checked: no input can overflow or shift a
 * negative value (both undefined in C).
 *
 * first_bad(counts: list[str], height: int, width: int)
 *   -> None, or (index, code, value): the first bad string's index, what is
 *      wrong (the CODE_* values below), and a detail (the offending
 *      character's code point, the count's length in characters, or the
 *      runs' total).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

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

/* The code of what stops `s` (a ready str of `len` >= 1 code points)
 * decoding to a mask of `pixels` pixels, or 0; its detail in *value. */
static int check_one(int kind, const void *data, Py_ssize_t len,
                     unsigned long long pixels, unsigned long long *value) {
  /* Every run so far is in [0, pixels], and so is their total. */
  unsigned long long total = 0, before_last = 0, last = 0;
  Py_ssize_t m = 0, p = 0;
  *value = 0;
  while (p < len) {
    unsigned long long x = 0;
    int k = 0, more = 1, negative = 0;
    while (more) {
      if (p >= len) return CODE_UNFINISHED;
      Py_UCS4 c = PyUnicode_READ(kind, data, p);
      if (c < 48 || c > 111) {
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
      more = c & 0x20;
      p++;
      k++;
      negative = !more && (c & 0x10);
    }
    /* The count is x - 2**(5k) when negative: |count| <= 2**40. */
    unsigned long long size = negative ? (1ULL << (5 * k)) - x : x;
    unsigned long long base = m > 2 ? before_last : 0; /* m >= 3: deltas. */
    if (negative && size > base) return CODE_NEGATIVE;
    unsigned long long run = negative ? base - size : base + size;
    if (run > pixels - total) { /* Past h*w: it cannot come back down. */
      *value = run > ~0ULL - total ? ~0ULL : total + run;
      return CODE_TOTAL;
    }
    total += run;
    before_last = last;
    last = run;
    m++;
  }
  *value = total;
  return total == pixels ? 0 : CODE_TOTAL;
}

static PyObject *first_bad(PyObject *self, PyObject *args) {
  PyObject *counts, *height_obj, *width_obj;
  (void)self;
  if (!PyArg_ParseTuple(args, "OOO", &counts, &height_obj, &width_obj))
    return NULL;
  unsigned long long height = 0, width = 0;
  int fits = 1;
  if (side(height_obj, &height, &fits) < 0) return NULL;
  if (side(width_obj, &width, &fits) < 0) return NULL;
  if (fits && height + 1 > MAX_INDEX / (width + 1)) fits = 0;
  PyObject *seq = PySequence_Fast(counts, "counts must be a sequence");
  if (seq == NULL) return NULL;
  const unsigned long long pixels = height * width;
  Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  PyObject **items = PySequence_Fast_ITEMS(seq);
  PyObject *result = NULL;
  int found = 0;
  if (n > 0 && !fits) {
    result = bad(0, CODE_SIZE, 0);
    found = 1;
  }
  for (Py_ssize_t i = 0; i < n && !found; i++) {
    PyObject *item = items[i];
    if (!PyUnicode_Check(item)) {
      result = bad(i, CODE_NOT_TEXT, 0);
      found = 1;
      break;
    }
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(item) < 0) {
      found = 1; /* result stays NULL: the exception is raised. */
      break;
    }
#endif
    /* Code points, never an encoding: a lone surrogate is a character
     * outside '0'..'o' like any other. */
    Py_ssize_t len = PyUnicode_GET_LENGTH(item);
    unsigned long long value = 0;
    int code = 0;
    if (len > 0)
      code = check_one(PyUnicode_KIND(item), PyUnicode_DATA(item), len,
                       pixels, &value);
    else if (pixels > 0) /* No runs: right for an empty mask only. */
      code = CODE_EMPTY;
    if (code != 0) {
      result = bad(i, code, value);
      found = 1;
    }
  }
  Py_DECREF(seq);
  if (!found) Py_RETURN_NONE;
  return result;
}

static PyMethodDef methods[] = {
    {"first_bad", first_bad, METH_VARARGS,
     "first_bad(counts, height, width) -> None or (index, code, value)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_rlecheck",
    "Build-time check of COCO RLE strings (see examples.check_counts).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__rlecheck(void) { return PyModule_Create(&module); }
