/* The binary subset kernel, hand-tiled for one CPU core (loaded by native.py).

   out[i * ldo + l] = #{n < len : b[l * ldb + n] > t[i * ldt + n]}

   The engine passes t = -a, so this counts a + b > 0: for finite float32 a and b the rounded
   sum fl(a + b) has the sign of the exact sum (a sum of floats that is not zero is at least
   the smallest subnormal), so the comparison is bit-for-bit the eager kernel's and saves its
   addition. A 4 x 4 tile of (t row, b row) pairs keeps 16 counters and 4 t vectors in zmm
   registers: each 16-lane step loads 8 vectors for 16 compares, so the loop is bound by the
   compare + masked add pairs, not by loads. Rows of b are taken CHUNK at a time so that they
   stay in L2 while every t tile passes over them. A tail of len % 16 examples is masked. */
#include <stdint.h>
#include <immintrin.h>
#ifndef __AVX512F__
#error "the native subset kernel needs AVX-512F (elsewhere the engine uses torch.compile)"
#endif

#define RA 4           /* t rows per tile */
#define RB 4           /* b rows per tile */
#define CHUNK (16 * RB) /* b rows per L2-resident chunk (64 rows x 3.5 KB at N = 872) */

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* One 16-lane step of a tile; `lanes` masks the tail (always_inline: the full steps, called
   with lanes == 0xFFFF, compile to plain loads and compares). */
static inline __attribute__((always_inline)) void tile_step(
    const float *const *tp, const float *const *bp, int64_t k, int tail, __mmask16 lanes,
    __m512i acc[RA][RB]) {
    const __m512i one = _mm512_set1_epi32(1);
    __m512 tv[RA];
    for (int x = 0; x < RA; x++)
        tv[x] = tail ? _mm512_maskz_loadu_ps(lanes, tp[x] + k) : _mm512_loadu_ps(tp[x] + k);
    for (int y = 0; y < RB; y++) {
        const __m512 bv = tail ? _mm512_maskz_loadu_ps(lanes, bp[y] + k) : _mm512_loadu_ps(bp[y] + k);
        for (int x = 0; x < RA; x++) {
            const __mmask16 m = tail ? _mm512_mask_cmp_ps_mask(lanes, bv, tv[x], _CMP_GT_OQ)
                                     : _mm512_cmp_ps_mask(bv, tv[x], _CMP_GT_OQ);
            acc[x][y] = _mm512_mask_add_epi32(acc[x][y], m, acc[x][y], one);
        }
    }
}

/* One tile: rows i..i+RA-1 of t against rows l..l+RB-1 of b (rows past the end repeat the last
   row; their counts are not stored). */
static inline __attribute__((always_inline)) void tile(const float *t, int64_t rows_t, int64_t ldt, const float *b, int64_t rows_b,
                 int64_t ldb, int64_t len, int32_t *out, int64_t ldo, int64_t i, int64_t l,
                 int64_t l_end) {
    const float *tp[RA], *bp[RB];
    for (int x = 0; x < RA; x++) tp[x] = t + min64(i + x, rows_t - 1) * ldt;
    for (int y = 0; y < RB; y++) bp[y] = b + min64(l + y, rows_b - 1) * ldb;
    __m512i acc[RA][RB];
    for (int x = 0; x < RA; x++)
        for (int y = 0; y < RB; y++) acc[x][y] = _mm512_setzero_si512();
    const int64_t full = len - len % 16;
    for (int64_t k = 0; k < full; k += 16) tile_step(tp, bp, k, 0, 0, acc);
    if (full < len) tile_step(tp, bp, full, 1, (__mmask16)((1u << (len % 16)) - 1u), acc);
    for (int x = 0; x < RA && i + x < rows_t; x++)
        for (int y = 0; y < RB && l + y < l_end; y++)
            out[(i + x) * ldo + l + y] = _mm512_reduce_add_epi32(acc[x][y]);
}

void count_greater(const float *t, int64_t rows_t, int64_t ldt, const float *b, int64_t rows_b,
                   int64_t ldb, int64_t len, int32_t *out, int64_t ldo) {
    for (int64_t c = 0; c < rows_b; c += CHUNK) {
        const int64_t c_end = min64(c + CHUNK, rows_b);
        for (int64_t i = 0; i < rows_t; i += RA)
            for (int64_t l = c; l < c_end; l += RB)
                tile(t, rows_t, ldt, b, rows_b, ldb, len, out, ldo, i, l, c_end);
    }
}
