/* Adaptive multi-symbol distributions (coder version 7): a whole symbol per coding step.
 *
 * A distribution over n <= 16 symbols is 16 lanes of 16 bits, c[j] = P(symbol <= j) scaled to
 * 2^15 - n·CDF_MINF (lanes j >= n - 1 hold that top); coding adds CDF_MINF per symbol, so
 * every symbol keeps a frequency of at least CDF_MINF / 2^15 and the coded total is 2^15.
 * Adaptation moves each lane towards the coded symbol's step function by a shift (1/2^shift),
 * in place and without multiplications: the whole update is a handful of vector instructions.
 * GCC / Clang vector extensions (any target); encoder and decoder run the same integer code. */
#ifndef FEATCODEC_CDF_H
#define FEATCODEC_CDF_H

#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#if !defined(__GNUC__) && !defined(__clang__)
#error "the lightweight kernel needs GCC or Clang (vector extensions)"
#endif

#define CDF_BITS 15
#define CDF_ONE (1u << CDF_BITS)
#define CDF_MINF 4
#define CDF_LANES 16

typedef uint16_t v16u __attribute__((vector_size(32)));

typedef struct {
    v16u c;
} cdf16;

/* Rates: a channel's distribution starts as a copy of the one pooled over the channels coded
 * so far (see lwcoder.c) and learns at 1/2^shift, shift = log2(events + 2) clamped to
 * [OWN_FIRST, OWN_FINAL]; the pooled one, which starts from a prior, to [POOLED_FIRST, POOLED_FINAL]. */
#define OWN_FIRST 3
#define OWN_FINAL 6
#define POOLED_FIRST 3
#define POOLED_FINAL 8

typedef struct {
    uint8_t own_shift[256], pooled_shift[256];
    uint8_t next[256];     /* events + 1, saturating */
    v16u up[CDF_LANES + 1]; /* up[s]: all ones in the lanes j >= s, those that grow when s is coded */
    v16u minf;             /* (j + 1)·CDF_MINF */
} cdf_tables;

static int cdf_rate_shift(int events, int first, int final) {
    int shift = 1;
    while ((2 << shift) <= events + 2) shift++;
    shift = shift < first ? first : shift;
    return shift < final ? shift : final;
}

static void cdf_tables_init(cdf_tables *t) {
    for (int n = 0; n < 256; n++) {
        t->own_shift[n] = (uint8_t)cdf_rate_shift(n, OWN_FIRST, OWN_FINAL);
        t->pooled_shift[n] = (uint8_t)cdf_rate_shift(n, POOLED_FIRST, POOLED_FINAL);
        t->next[n] = (uint8_t)(n < 255 ? n + 1 : 255);
    }
    for (int s = 0; s <= CDF_LANES; s++)
        for (int j = 0; j < CDF_LANES; j++) t->up[s][j] = (uint16_t)(j >= s ? 0xFFFF : 0);
    for (int j = 0; j < CDF_LANES; j++) t->minf[j] = (uint16_t)((j + 1) * CDF_MINF);
}

static inline uint16_t cdf_top(int n_symbols) { return (uint16_t)(CDF_ONE - (uint32_t)n_symbols * CDF_MINF); }

/* The uniform distribution over n symbols. */
static void cdf_init(cdf16 *d, int n) {
    const uint32_t top = cdf_top(n);
    for (int j = 0; j < CDF_LANES; j++) d->c[j] = (uint16_t)(j >= n - 1 ? top : top * (uint32_t)(j + 1) / (uint32_t)n);
}

/* Lanes j >= symbol move up towards top, the others down towards 0: at most top - c or c moves,
 * so lanes stay in [0, top] and in increasing order; the lanes j >= n - 1 (at top) stay put. */
static inline void cdf_adapt(const cdf_tables *t, cdf16 *d, int symbol, int shift, const v16u *top) {
    const v16u c = d->c, up = t->up[symbol];
    d->c = c + (((*top - c) >> shift) & up) - ((c >> shift) & ~up);
}

/* The decoded symbol: how many lanes of the increasing cumulative `cum` are <= v (v < 2^15). */
static inline int cdf_find(const v16u *cum, uint32_t v) {
#ifdef __SSE2__
    __m128i lo, hi;
    memcpy(&lo, cum, 16);
    memcpy(&hi, (const char *)cum + 16, 16);
    /* unsigned lanes compared as signed once their top bit is flipped; the lanes > v are a suffix */
    const __m128i flip = _mm_set1_epi16((short)0x8000), target = _mm_set1_epi16((short)(v ^ 0x8000u));
    const __m128i above_lo = _mm_cmpgt_epi16(_mm_xor_si128(lo, flip), target);
    const __m128i above_hi = _mm_cmpgt_epi16(_mm_xor_si128(hi, flip), target);
    const unsigned above = (unsigned)_mm_movemask_epi8(_mm_packs_epi16(above_lo, above_hi));
    return __builtin_ctz(above | 0x10000u);
#else
    int count = 0;
    for (int j = 0; j < CDF_LANES; j++) count += (*cum)[j] <= v;
    return count;
#endif
}

#endif
