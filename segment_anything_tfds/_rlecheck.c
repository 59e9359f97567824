/* Build-time check of COCO compressed RLE strings, in one pass of C.
 *
 * `examples.check_counts` calls `first_bad(counts, height, width)` for every
 * image of a build: about 100 strings and 65-200 k characters. The format is
 * stated in `rle.py`; this parses it exactly as pycocotools' `rleFrString`
 * does, and stops at the first string that cannot decode to a height x width
 * mask. `examples.py` holds a numpy version of the same check, used when this
 * extension is not built; the tests compare the two.
 *
 * first_bad(counts: list[str], height: int, width: int)
 *   -> None, or (index, code, value): the first bad string's index, what is
 *      wrong (the CODE_* values below), and a detail (the offending byte, the
 *      count's length in characters, or the runs' total).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

enum {
  CODE_EMPTY = 1,       /* value: 0 */
  CODE_CHARACTER = 2,   /* value: the byte outside '0'..'o' */
  CODE_UNFINISHED = 3,  /* value: 0 */
  CODE_TOO_LONG = 4,    /* value: characters in the count */
  CODE_NEGATIVE = 5,    /* value: 0 */
  CODE_TOTAL = 6,       /* value: the runs' total (capped just over h*w) */
  CODE_NOT_TEXT = 7,    /* value: 0 */
};

#define MAX_CHARS_PER_COUNT 8

static PyObject *bad(Py_ssize_t index, int code, long long value) {
  return Py_BuildValue("(nil)", index, code, value);
}

static PyObject *first_bad(PyObject *self, PyObject *args) {
  PyObject *counts;
  long long height, width;
  (void)self;
  if (!PyArg_ParseTuple(args, "OLL", &counts, &height, &width)) return NULL;
  PyObject *seq = PySequence_Fast(counts, "counts must be a sequence");
  if (seq == NULL) return NULL;
  const long long pixels = height * width;
  Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  PyObject **items = PySequence_Fast_ITEMS(seq);
  PyObject *result = NULL;
  for (Py_ssize_t i = 0; i < n && result == NULL; i++) {
    if (!PyUnicode_Check(items[i])) {
      result = bad(i, CODE_NOT_TEXT, 0);
      break;
    }
    Py_ssize_t len;
    /* Non-ASCII text comes out as bytes >= 0x80: refused as characters. */
    const unsigned char *s =
        (const unsigned char *)PyUnicode_AsUTF8AndSize(items[i], &len);
    if (s == NULL) {
      Py_DECREF(seq);
      return NULL;
    }
    if (len == 0) {
      result = bad(i, CODE_EMPTY, 0);
      break;
    }
    long long total = 0, before_last = 0, last = 0;
    long long m = 0;
    Py_ssize_t p = 0;
    while (p < len) {
      long long x = 0;
      int k = 0, more = 1;
      while (more) {
        if (p >= len) {
          result = bad(i, CODE_UNFINISHED, 0);
          break;
        }
        unsigned c = s[p];
        if (c < 48 || c > 111) {
          result = bad(i, CODE_CHARACTER, c);
          break;
        }
        c -= 48;
        if (k == MAX_CHARS_PER_COUNT) {
          /* Count the rest of this count's characters, for the message. */
          int chars = k;
          while (p < len && s[p] >= 48 + 32 && s[p] <= 111) p++, chars++;
          result = bad(i, CODE_TOO_LONG, chars + 1);
          break;
        }
        x |= (long long)(c & 0x1f) << (5 * k);
        more = c & 0x20;
        p++;
        k++;
        if (!more && (c & 0x10)) x |= -1LL << (5 * k);
      }
      if (result != NULL) break;
      if (m > 2) x += before_last; /* Counts m >= 3 are deltas to m - 2. */
      if (x < 0) {
        result = bad(i, CODE_NEGATIVE, 0);
        break;
      }
      total += x;
      if (total > pixels) break; /* Cannot come back down: report below. */
      before_last = last;
      last = x;
      m++;
    }
    if (result == NULL && total != pixels) result = bad(i, CODE_TOTAL, total);
  }
  Py_DECREF(seq);
  if (result == NULL) Py_RETURN_NONE;
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
