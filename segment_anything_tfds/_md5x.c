/* MD5 of several files at once: one file per SIMD lane.
 *
 * MD5 (RFC 1321) cannot be split within one file: every 64-byte block
 * needs the state the block before it left. A build that checks many tars
 * against the published md5 list has many files, though, so this kernel
 * runs 8 or 16 of them side by side, one per 32-bit lane of a 256-bit or
 * 512-bit register, each lane its own MD5. On one core that is about 5x
 * (8 lanes) to 7x (16) hashlib's rate; `sources/md5x.py` feeds it.
 *
 * compress(states, buf, offsets, nblocks, kernel) -> None
 *   Runs `nblocks` 64-byte blocks through each lane. `states` is a writable
 *   buffer of 16 * len(offsets) bytes: per lane, MD5's four 32-bit words
 *   (A, B, C, D) in native order. `offsets[i]` is where lane i's blocks
 *   start in the read-only buffer `buf`, or -1 for a lane with nothing to
 *   do (its state is neither read nor written). Every used lane must have
 *   64 * nblocks bytes in `buf` from its offset. `kernel` is a name from
 *   `kernels()`; len(offsets) is at most its lanes (16 for 'c'). The GIL
 *   is released while it runs.
 *
 * drive(states, buf, chunk, table, kernel, budget) -> (lane, errno)
 *   Reads and hashes whole files, one per lane, as `compress` does with
 *   blocks: `table` is a writable buffer of 5 int64s per lane (its fd, -1
 *   for none; then, in its `chunk` bytes of `buf` from lane * chunk, the
 *   next byte to hash and the end of what was read; bytes read so far;
 *   whether the file has ended). A lane with less than a block left moves
 *   it to the front of its part and reads after it. Comes back when a
 *   lane's file has ended with less than a block left (that lane, errno
 *   0: the caller pads its tail), when a read fails (that lane and the
 *   errno; EINTR too, to let signal handlers run), or once `budget` bytes
 *   are hashed (-1, 0). The GIL is released while it runs, reads included:
 *   in Python, the loop spent more on itself than on reading.
 *
 * kernels() -> ((name, lanes), ...): those this CPU runs, fastest first:
 *   'avx512' (16 lanes in 512-bit registers), 'avx512vl' (8 lanes, AVX2
 *   with AVX-512's ternary logic and rotation on 256-bit registers: 4
 *   instructions in each step's dependency chain instead of 6), 'avx2'
 *   (8 lanes) and 'c' (portable C, the lanes one after the other; always
 *   there). A kernel costs the same however many of its lanes are used,
 *   so 'avx512' pays only with more than 8 files to hash (md5x.py picks).
 *   Loading 16 lanes' words by gathers was tried: slower than the 8-lane
 *   transposes, which 'avx512' uses twice.
 *
 * All the kernels run the one list of 64 steps (`MD5_STEPS`), so they
 * cannot differ in a constant or a shift; the tests compare each with
 * hashlib on this machine.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>

#if (defined(__x86_64__) || defined(__i386__)) && \
    (defined(__GNUC__) || defined(__clang__))
#define MD5X_X86 1
#include <immintrin.h>
#endif

#define MAX_LANES 16

/* RFC 1321's table: floor(abs(sin(i + 1)) * 2**32). */
static const uint32_t K[64] = {
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a,
    0xa8304613, 0xfd469501, 0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be,
    0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821, 0xf61e2562, 0xc040b340,
    0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8,
    0x676f02d9, 0x8d2a4c8a, 0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c,
    0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70, 0x289b7ec6, 0xeaa127fa,
    0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92,
    0xffeff47d, 0x85845dd1, 0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1,
    0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391};

/* The 64 steps: STEP(function, a, b, c, d, message word, step, shift)
 * computes a = b + rotl(a + f(b, c, d) + M[word] + K[step], shift). */
#define MD5_STEPS(S)                                                        \
  S(F, a, b, c, d, 0, 0, 7)   S(F, d, a, b, c, 1, 1, 12)                    \
  S(F, c, d, a, b, 2, 2, 17)  S(F, b, c, d, a, 3, 3, 22)                    \
  S(F, a, b, c, d, 4, 4, 7)   S(F, d, a, b, c, 5, 5, 12)                    \
  S(F, c, d, a, b, 6, 6, 17)  S(F, b, c, d, a, 7, 7, 22)                    \
  S(F, a, b, c, d, 8, 8, 7)   S(F, d, a, b, c, 9, 9, 12)                    \
  S(F, c, d, a, b, 10, 10, 17) S(F, b, c, d, a, 11, 11, 22)                 \
  S(F, a, b, c, d, 12, 12, 7) S(F, d, a, b, c, 13, 13, 12)                  \
  S(F, c, d, a, b, 14, 14, 17) S(F, b, c, d, a, 15, 15, 22)                 \
  S(G, a, b, c, d, 1, 16, 5)  S(G, d, a, b, c, 6, 17, 9)                    \
  S(G, c, d, a, b, 11, 18, 14) S(G, b, c, d, a, 0, 19, 20)                  \
  S(G, a, b, c, d, 5, 20, 5)  S(G, d, a, b, c, 10, 21, 9)                   \
  S(G, c, d, a, b, 15, 22, 14) S(G, b, c, d, a, 4, 23, 20)                  \
  S(G, a, b, c, d, 9, 24, 5)  S(G, d, a, b, c, 14, 25, 9)                   \
  S(G, c, d, a, b, 3, 26, 14) S(G, b, c, d, a, 8, 27, 20)                   \
  S(G, a, b, c, d, 13, 28, 5) S(G, d, a, b, c, 2, 29, 9)                    \
  S(G, c, d, a, b, 7, 30, 14) S(G, b, c, d, a, 12, 31, 20)                  \
  S(H, a, b, c, d, 5, 32, 4)  S(H, d, a, b, c, 8, 33, 11)                   \
  S(H, c, d, a, b, 11, 34, 16) S(H, b, c, d, a, 14, 35, 23)                 \
  S(H, a, b, c, d, 1, 36, 4)  S(H, d, a, b, c, 4, 37, 11)                   \
  S(H, c, d, a, b, 7, 38, 16) S(H, b, c, d, a, 10, 39, 23)                  \
  S(H, a, b, c, d, 13, 40, 4) S(H, d, a, b, c, 0, 41, 11)                   \
  S(H, c, d, a, b, 3, 42, 16) S(H, b, c, d, a, 6, 43, 23)                   \
  S(H, a, b, c, d, 9, 44, 4)  S(H, d, a, b, c, 12, 45, 11)                  \
  S(H, c, d, a, b, 15, 46, 16) S(H, b, c, d, a, 2, 47, 23)                  \
  S(I, a, b, c, d, 0, 48, 6)  S(I, d, a, b, c, 7, 49, 10)                   \
  S(I, c, d, a, b, 14, 50, 15) S(I, b, c, d, a, 5, 51, 21)                  \
  S(I, a, b, c, d, 12, 52, 6) S(I, d, a, b, c, 3, 53, 10)                   \
  S(I, c, d, a, b, 10, 54, 15) S(I, b, c, d, a, 1, 55, 21)                  \
  S(I, a, b, c, d, 8, 56, 6)  S(I, d, a, b, c, 15, 57, 10)                  \
  S(I, c, d, a, b, 6, 58, 15) S(I, b, c, d, a, 13, 59, 21)                  \
  S(I, a, b, c, d, 4, 60, 6)  S(I, d, a, b, c, 11, 61, 10)                  \
  S(I, c, d, a, b, 2, 62, 15) S(I, b, c, d, a, 9, 63, 21)

/* ------------------------------------------------------------ portable */

#define ROTL32(x, s) (((x) << (s)) | ((x) >> (32 - (s))))
#define SF(b, c, d) ((d) ^ ((b) & ((c) ^ (d))))
#define SG(b, c, d) ((c) ^ ((d) & ((b) ^ (c))))
#define SH(b, c, d) ((b) ^ (c) ^ (d))
#define SI(b, c, d) ((c) ^ ((b) | ~(d)))
#define SSTEP(f, a, b, c, d, w, i, s) \
  a += S##f(b, c, d) + m[w] + K[i];   \
  a = b + ROTL32(a, s);

static void md5_blocks_c(uint32_t st[4], const unsigned char *p,
                         Py_ssize_t nblocks) {
  uint32_t a = st[0], b = st[1], c = st[2], d = st[3];
  for (Py_ssize_t n = 0; n < nblocks; n++, p += 64) {
    uint32_t m[16];
    for (int w = 0; w < 16; w++) {  /* Little-endian words, on any CPU. */
      const unsigned char *q = p + 4 * w;
      m[w] = (uint32_t)q[0] | (uint32_t)q[1] << 8 | (uint32_t)q[2] << 16 |
             (uint32_t)q[3] << 24;
    }
    uint32_t a0 = a, b0 = b, c0 = c, d0 = d;
    MD5_STEPS(SSTEP)
    a += a0; b += b0; c += c0; d += d0;
  }
  st[0] = a; st[1] = b; st[2] = c; st[3] = d;
}

#ifdef MD5X_X86

/* ---------------------------------------------------- 8 lanes: AVX2 */

/* One body for the two 8-lane kernels: `DEFINE_MD5_8` expands the V8*
 * operations defined just before it. */
#define V8ADD(x, y) _mm256_add_epi32(x, y)
/* a + M[w] + K[i] does not wait on the step before (a is four steps old),
 * so it is summed first and kept from the optimizer (an empty asm that
 * "changes" it): left alone, GCC adds f(b, c, d) to M[w] + K[i] first,
 * which puts one more add on each step's chain of dependencies. */
#define V8STEP(f, a, b, c, d, w, i, s)                                    \
  a = V8ADD(a, V8ADD(m[w], _mm256_set1_epi32((int)K[i])));                \
  __asm__("" : "+v"(a));                                                  \
  a = V8ADD(a, V8##f(b, c, d));                                           \
  a = V8ADD(b, V8ROL(a, s));
/* m[w] = word w of each lane's block (lane l's at p[l] + at): two 8 x 8
 * transposes of 32-bit words (gathers cost twice the time). */
#define LOAD_WORDS_8(isa)                                                  \
  __attribute__((target(isa))) static inline void load_words_8(            \
      __m256i m[16], const unsigned char *const p[8], Py_ssize_t at) {     \
    for (int h = 0; h < 2; h++) {                                         \
      __m256i r[8], t[8], u[8];                                           \
      for (int l = 0; l < 8; l++)                                         \
        r[l] = _mm256_loadu_si256(                                        \
            (const __m256i *)(p[l] + at + 32 * h));                       \
      for (int l = 0; l < 8; l += 2) {                                    \
        t[l] = _mm256_unpacklo_epi32(r[l], r[l + 1]);                     \
        t[l + 1] = _mm256_unpackhi_epi32(r[l], r[l + 1]);                 \
      }                                                                   \
      for (int q = 0; q < 8; q += 4) {                                    \
        u[q] = _mm256_unpacklo_epi64(t[q], t[q + 2]);                     \
        u[q + 1] = _mm256_unpackhi_epi64(t[q], t[q + 2]);                 \
        u[q + 2] = _mm256_unpacklo_epi64(t[q + 1], t[q + 3]);             \
        u[q + 3] = _mm256_unpackhi_epi64(t[q + 1], t[q + 3]);             \
      }                                                                   \
      for (int w = 0; w < 4; w++) {                                       \
        m[8 * h + w] = _mm256_permute2x128_si256(u[w], u[w + 4], 0x20);   \
        m[8 * h + w + 4] =                                                \
            _mm256_permute2x128_si256(u[w], u[w + 4], 0x31);              \
      }                                                                   \
    }                                                                     \
  }
LOAD_WORDS_8("avx2")

#define DEFINE_MD5_8(name, isa)                                           \
  __attribute__((target(isa))) static void name(                             \
      uint32_t st[8][4], const unsigned char *const p[8],                  \
      Py_ssize_t nblocks) {                                               \
    const __m256i by4 = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);   \
    const int *s0 = (const int *)&st[0][0];                               \
    __m256i a = _mm256_i32gather_epi32(s0, by4, 4);                       \
    __m256i b = _mm256_i32gather_epi32(s0 + 1, by4, 4);                   \
    __m256i c = _mm256_i32gather_epi32(s0 + 2, by4, 4);                   \
    __m256i d = _mm256_i32gather_epi32(s0 + 3, by4, 4);                   \
    const __m256i ones = _mm256_set1_epi32(-1);                           \
    (void)ones;                                                           \
    for (Py_ssize_t n = 0; n < nblocks; n++) {                            \
      __m256i m[16];                                                      \
      load_words_8(m, p, 64 * n);                                         \
      __m256i a0 = a, b0 = b, c0 = c, d0 = d;                             \
      MD5_STEPS(V8STEP)                                                   \
      a = V8ADD(a, a0); b = V8ADD(b, b0);                                 \
      c = V8ADD(c, c0); d = V8ADD(d, d0);                                 \
    }                                                                     \
    uint32_t out[4][8];                                                   \
    _mm256_storeu_si256((__m256i *)out[0], a);                            \
    _mm256_storeu_si256((__m256i *)out[1], b);                            \
    _mm256_storeu_si256((__m256i *)out[2], c);                            \
    _mm256_storeu_si256((__m256i *)out[3], d);                            \
    for (int l = 0; l < 8; l++)                                           \
      for (int j = 0; j < 4; j++) st[l][j] = out[j][l];                   \
  }

/* AVX2: boolean functions and rotations of two or three instructions. */
#define V8F(b, c, d) \
  _mm256_xor_si256(d, _mm256_and_si256(b, _mm256_xor_si256(c, d)))
#define V8G(b, c, d) \
  _mm256_xor_si256(c, _mm256_and_si256(d, _mm256_xor_si256(b, c)))
#define V8H(b, c, d) _mm256_xor_si256(_mm256_xor_si256(b, c), d)
#define V8I(b, c, d) \
  _mm256_xor_si256(c, _mm256_or_si256(b, _mm256_xor_si256(d, ones)))
#define V8ROL(x, s) \
  _mm256_or_si256(_mm256_slli_epi32(x, s), _mm256_srli_epi32(x, 32 - (s)))
DEFINE_MD5_8(md5_blocks_avx2, "avx2")
#undef V8F
#undef V8G
#undef V8H
#undef V8I
#undef V8ROL

/* AVX-512VL on 256-bit registers: one vpternlogd per function (the tables
 * are below) and one vprold per rotation, so each step's dependency chain
 * is 4 instructions instead of 6. */
#define V8F(b, c, d) _mm256_ternarylogic_epi32(b, c, d, 0xca)
#define V8G(b, c, d) _mm256_ternarylogic_epi32(b, c, d, 0xe4)
#define V8H(b, c, d) _mm256_ternarylogic_epi32(b, c, d, 0x96)
#define V8I(b, c, d) _mm256_ternarylogic_epi32(b, c, d, 0x39)
#define V8ROL(x, s) _mm256_rol_epi32(x, s)
DEFINE_MD5_8(md5_blocks_avx512vl, "avx2,avx512f,avx512vl")

/* ------------------------------------------------ 16 lanes: AVX-512 */

/* One 8-lane step waits on the one before it (4 instructions of latency
 * each) and leaves most of the core's vector units idle. A 512-bit
 * register runs 16 lanes through the same chain of 4: on this project's
 * AMD machine (Zen 4, 512-bit operations on two 256-bit halves) that is
 * 1.5x the 8-lane rate, for files enough to fill them. */
static uint32_t K16[64][16] __attribute__((aligned(64)));  /* K, per lane. */
#define V16ADD(x, y) _mm512_add_epi32(x, y)
#define V16F(b, c, d) _mm512_ternarylogic_epi32(b, c, d, 0xca)
#define V16G(b, c, d) _mm512_ternarylogic_epi32(b, c, d, 0xe4)
#define V16H(b, c, d) _mm512_ternarylogic_epi32(b, c, d, 0x96)
#define V16I(b, c, d) _mm512_ternarylogic_epi32(b, c, d, 0x39)
#define V16STEP(f, a, b, c, d, w, i, s)                                   \
  a = V16ADD(a, V16ADD(m[w], _mm512_load_si512((const void *)K16[i])));   \
  __asm__("" : "+v"(a));                                                  \
  a = V16ADD(a, V16##f(b, c, d));                                         \
  a = V16ADD(b, _mm512_rol_epi32(a, s));

/* Lanes 0-7 and 8-15 are transposed as by the 8-lane kernels and put in
 * the two halves of each register. */
__attribute__((target("avx2,avx512f,avx512vl"))) static void
md5_blocks_avx512(uint32_t st[16][4], const unsigned char *const p[16],
                  Py_ssize_t nblocks) {
  const __m512i by4 = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 32, 36,
                                        40, 44, 48, 52, 56, 60);
  const int *s0 = (const int *)&st[0][0];
  __m512i a = _mm512_i32gather_epi32(by4, s0, 4);
  __m512i b = _mm512_i32gather_epi32(by4, s0 + 1, 4);
  __m512i c = _mm512_i32gather_epi32(by4, s0 + 2, 4);
  __m512i d = _mm512_i32gather_epi32(by4, s0 + 3, 4);
  for (Py_ssize_t n = 0; n < nblocks; n++) {
    __m256i lo[16], hi[16];
    __m512i m[16];
    load_words_8(lo, p, 64 * n);
    load_words_8(hi, p + 8, 64 * n);
    for (int w = 0; w < 16; w++)
      m[w] = _mm512_inserti64x4(_mm512_castsi256_si512(lo[w]), hi[w], 1);
    __m512i a0 = a, b0 = b, c0 = c, d0 = d;
    MD5_STEPS(V16STEP)
    a = V16ADD(a, a0); b = V16ADD(b, b0);
    c = V16ADD(c, c0); d = V16ADD(d, d0);
  }
  uint32_t out[4][16];
  _mm512_storeu_si512((void *)out[0], a);
  _mm512_storeu_si512((void *)out[1], b);
  _mm512_storeu_si512((void *)out[2], c);
  _mm512_storeu_si512((void *)out[3], d);
  for (int l = 0; l < 16; l++)
    for (int j = 0; j < 4; j++) st[l][j] = out[j][l];
}

#endif /* MD5X_X86 */

/* The kernels, in the order `kernels()` lists them. */
enum { K_AVX512, K_AVX512VL, K_AVX2, K_C, N_KERNELS };
static const char *const KERNEL_NAMES[N_KERNELS] = {"avx512", "avx512vl",
                                                    "avx2", "c"};
static const int KERNEL_LANES[N_KERNELS] = {16, 8, 8, MAX_LANES};

static int runs_here(int kernel) {
  if (kernel == K_C) return 1;
#ifdef MD5X_X86
  __builtin_cpu_init();
  if (kernel == K_AVX512 || kernel == K_AVX512VL)
    return __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx2");
  if (kernel == K_AVX2) return __builtin_cpu_supports("avx2");
#endif
  return 0;
}

/* The kernel called `name` if this CPU runs it; else -1 and a
 * ValueError. */
static int kernel_named(const char *name) {
  for (int k = 0; k < N_KERNELS; k++)
    if (strcmp(name, KERNEL_NAMES[k]) == 0 && runs_here(k)) return k;
  PyErr_Format(PyExc_ValueError, "no md5 kernel %s on this CPU", name);
  return -1;
}

static PyObject *kernels(PyObject *self, PyObject *unused) {
  (void)self;
  (void)unused;
  PyObject *out = PyList_New(0);
  if (out == NULL) return NULL;
  for (int k = 0; k < N_KERNELS; k++) {
    if (!runs_here(k)) continue;
    PyObject *item = Py_BuildValue(
        "(si)", KERNEL_NAMES[k], k == K_C ? 1 : KERNEL_LANES[k]);
    if (item == NULL || PyList_Append(out, item) < 0) {
      Py_XDECREF(item);
      Py_DECREF(out);
      return NULL;
    }
    Py_DECREF(item);
  }
  PyObject *tuple = PyList_AsTuple(out);
  Py_DECREF(out);
  return tuple;
}

/* Runs `nblocks` blocks through lanes 0..lanes-1 of `kernel`: lane i's
 * start at p + off[i], or nowhere for off[i] == -1; `used` is a lane that
 * has blocks. `st` holds 16 bytes of state per lane, touched only through
 * memcpy (any alignment will do). Called without the GIL. */
static void run_lanes(int kernel, Py_ssize_t lanes, const Py_ssize_t *off,
                      int used, const unsigned char *p, void *states,
                      Py_ssize_t nblocks) {
  unsigned char(*st)[16] = (unsigned char(*)[16])states;
  if (kernel == K_C) {
    for (Py_ssize_t i = 0; i < lanes; i++) {
      if (off[i] == -1) continue;
      uint32_t one[4];
      memcpy(one, st[i], sizeof one);
      md5_blocks_c(one, p + off[i], nblocks);
      memcpy(st[i], one, sizeof one);
    }
    return;
  }
#ifdef MD5X_X86
  /* Unused lanes read the first used lane's blocks and their result is
   * dropped. */
  int width = KERNEL_LANES[kernel];
  uint32_t lane_st[MAX_LANES][4];
  const unsigned char *lane_p[MAX_LANES];
  for (Py_ssize_t i = 0; i < width && i < MAX_LANES; i++) {
    int live = i < lanes && off[i] != -1;
    lane_p[i] = p + (live ? off[i] : off[used]);
    memcpy(lane_st[i], st[live ? i : used], sizeof lane_st[i]);
  }
  if (kernel == K_AVX512)
    md5_blocks_avx512(lane_st, lane_p, nblocks);
  else if (kernel == K_AVX512VL)
    md5_blocks_avx512vl(lane_st, lane_p, nblocks);
  else
    md5_blocks_avx2(lane_st, lane_p, nblocks);
  for (Py_ssize_t i = 0; i < lanes; i++)
    if (off[i] != -1) memcpy(st[i], lane_st[i], sizeof lane_st[i]);
#endif
}

static PyObject *compress(PyObject *self, PyObject *args) {
  (void)self;
  Py_buffer states, buf;
  PyObject *offsets_obj;
  Py_ssize_t nblocks;
  const char *name;
  if (!PyArg_ParseTuple(args, "w*y*Ons", &states, &buf, &offsets_obj,
                        &nblocks, &name))
    return NULL;
  PyObject *result = NULL;
  PyObject *offsets = NULL;
  Py_ssize_t off[MAX_LANES];
  Py_ssize_t lanes = 0;
  int kernel = kernel_named(name);
  if (kernel < 0) goto done;
  int width = KERNEL_LANES[kernel];
  offsets = PySequence_Fast(offsets_obj, "offsets must be a sequence");
  if (offsets == NULL) goto done;
  lanes = PySequence_Fast_GET_SIZE(offsets);
  if (lanes > width) {
    PyErr_Format(PyExc_ValueError, "%zd lanes for the %d-lane kernel %s",
                 lanes, width, name);
    goto done;
  }
  if (!PyBuffer_IsContiguous(&states, 'C') ||
      !PyBuffer_IsContiguous(&buf, 'C') || states.len != 16 * lanes) {
    PyErr_SetString(PyExc_ValueError,
                    "states must be 16 contiguous bytes per lane and buf "
                    "contiguous");
    goto done;
  }
  if (nblocks < 0 || nblocks > buf.len / 64) {
    PyErr_SetString(PyExc_ValueError, "nblocks out of range");
    goto done;
  }
  int used = -1;
  for (Py_ssize_t i = 0; i < lanes; i++) {
    Py_ssize_t o = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(offsets, i));
    if (o == -1 && PyErr_Occurred()) goto done;
    if (o != -1 && (o < 0 || o > buf.len - 64 * nblocks)) {
      PyErr_Format(PyExc_ValueError,
                   "lane %zd: offset %zd and %zd blocks are outside a "
                   "buffer of %zd bytes", i, o, nblocks, buf.len);
      goto done;
    }
    off[i] = o;
    if (o != -1 && used < 0) used = (int)i;
  }
  if (used >= 0 && nblocks > 0) {
    const unsigned char *p = (const unsigned char *)buf.buf;
    /* The buffers' exports are held, so their memory stays put. */
    Py_BEGIN_ALLOW_THREADS
    run_lanes(kernel, lanes, off, used, p, states.buf, nblocks);
    Py_END_ALLOW_THREADS
  }
  Py_INCREF(Py_None);
  result = Py_None;
done:
  Py_XDECREF(offsets);
  PyBuffer_Release(&states);
  PyBuffer_Release(&buf);
  return result;
}

/* One lane of `drive`'s table: 5 int64s. */
enum { T_FD, T_POS, T_END, T_TOTAL, T_EOF, T_FIELDS };

static PyObject *drive(PyObject *self, PyObject *args) {
  (void)self;
  Py_buffer states, buf, table;
  Py_ssize_t chunk, budget;
  const char *name;
  if (!PyArg_ParseTuple(args, "w*w*nw*sn", &states, &buf, &chunk, &table,
                        &name, &budget))
    return NULL;
  PyObject *result = NULL;
  int kernel = kernel_named(name);
  if (kernel < 0) goto done;
  Py_ssize_t lanes = table.len / (Py_ssize_t)(T_FIELDS * sizeof(int64_t));
  int64_t t[MAX_LANES][T_FIELDS];
  if (!PyBuffer_IsContiguous(&states, 'C') ||
      !PyBuffer_IsContiguous(&buf, 'C') ||
      !PyBuffer_IsContiguous(&table, 'C') ||
      table.len != lanes * (Py_ssize_t)sizeof t[0] || lanes < 1 ||
      lanes > KERNEL_LANES[kernel] || states.len != 16 * lanes) {
    PyErr_SetString(PyExc_ValueError,
                    "the table must hold 5 int64s per lane, at most the "
                    "kernel's lanes, and states 16 bytes per lane");
    goto done;
  }
  if (chunk < 128 || chunk % 64 != 0 || chunk > buf.len / lanes ||
      budget < 1) {
    PyErr_SetString(PyExc_ValueError,
                    "chunk must be a multiple of 64 from 128, with a chunk "
                    "per lane in buf, and budget positive");
    goto done;
  }
  memcpy(t, table.buf, table.len);
  for (Py_ssize_t i = 0; i < lanes; i++)
    if (t[i][T_FD] != -1 &&
        (t[i][T_FD] < 0 || t[i][T_FD] > INT32_MAX || t[i][T_POS] < 0 ||
         t[i][T_POS] > t[i][T_END] || t[i][T_END] > chunk ||
         t[i][T_TOTAL] < 0 || t[i][T_TOTAL] > INT64_MAX / 2 ||
         (t[i][T_EOF] != 0 && t[i][T_EOF] != 1))) {
      PyErr_Format(PyExc_ValueError,
                   "lane %zd: a bad fd, position, byte count or end flag",
                   i);
      goto done;
    }
  Py_ssize_t lane = -1;
  int err = 0;
  unsigned char *p = (unsigned char *)buf.buf;
  /* The buffers' exports are held, so their memory stays put. */
  Py_BEGIN_ALLOW_THREADS
  Py_ssize_t hashed = 0;
  Py_ssize_t off[MAX_LANES];
  while (hashed < budget && lane < 0) {
    int used = -1;
    Py_ssize_t nblocks = PY_SSIZE_T_MAX, live = 0;
    for (Py_ssize_t i = 0; i < lanes && lane < 0; i++) {
      int64_t *l = t[i];
      off[i] = -1;
      if (l[T_FD] == -1) continue;
      unsigned char *base = p + i * chunk;
      while (l[T_END] - l[T_POS] < 64 && !l[T_EOF]) {
        /* Less than a block left: move it to the front, read after it. */
        int64_t tail = l[T_END] - l[T_POS];
        memmove(base, base + l[T_POS], (size_t)tail);
        l[T_POS] = 0;
        l[T_END] = tail;
        ssize_t n = read((int)l[T_FD], base + tail, (size_t)(chunk - tail));
        if (n < 0) {
          lane = i;
          err = errno;
          break;
        }
        l[T_END] += n;
        l[T_TOTAL] += n;
        l[T_EOF] = n == 0;
      }
      if (lane >= 0) break;
      if (l[T_END] - l[T_POS] < 64) {  /* At its end: Python finishes it. */
        lane = i;
        break;
      }
      off[i] = i * chunk + (Py_ssize_t)l[T_POS];
      if (used < 0) used = (int)i;
      if ((l[T_END] - l[T_POS]) / 64 < nblocks)
        nblocks = (Py_ssize_t)((l[T_END] - l[T_POS]) / 64);
      live++;
    }
    if (lane >= 0 || used < 0) break;
    run_lanes(kernel, lanes, off, used, p, states.buf, nblocks);
    for (Py_ssize_t i = 0; i < lanes; i++)
      if (off[i] != -1) t[i][T_POS] += 64 * nblocks;
    hashed += 64 * nblocks * live;
  }
  Py_END_ALLOW_THREADS
  memcpy(table.buf, t, table.len);
  result = Py_BuildValue("(ni)", lane, err);
done:
  PyBuffer_Release(&states);
  PyBuffer_Release(&buf);
  PyBuffer_Release(&table);
  return result;
}

static PyMethodDef methods[] = {
    {"compress", compress, METH_VARARGS,
     "compress(states, buf, offsets, nblocks, kernel): MD5 blocks, one "
     "file per lane."},
    {"drive", drive, METH_VARARGS,
     "drive(states, buf, chunk, table, kernel, budget): reads and hashes "
     "the lanes' files until one ends or fails, or budget bytes are "
     "hashed; (lane, errno), lane -1 for the budget."},
    {"kernels", kernels, METH_NOARGS,
     "kernels(): ((name, lanes), ...) this CPU runs, 'c' last."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_md5x",
                                    "MD5 of several files at once.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__md5x(void) {
#ifdef MD5X_X86
  for (int i = 0; i < 64; i++)
    for (int l = 0; l < 16; l++) K16[i][l] = K[i];
#endif
  return PyModule_Create(&module);
}
