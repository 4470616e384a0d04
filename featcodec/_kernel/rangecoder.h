/* Binary range coder (the LZMA coder's scheme: 32-bit range, carry through a cached byte).
 *
 * Probabilities are P(bit = 1) in 16 bits (1 .. 65535). The encoder writes into a buffer that
 * grows as needed; the decoder reads a buffer of known length and never past it: reads beyond
 * the end return 0 and are counted, so a truncated or crafted stream ends in an error, not in
 * a read out of bounds. */
#ifndef FEATCODEC_RANGECODER_H
#define FEATCODEC_RANGECODER_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#define RC_TOP (1u << 24)
#define RC_PROB_BITS 16

typedef struct {
    uint64_t low;
    uint32_t range;
    uint8_t cache;
    uint64_t cache_size;
    uint8_t *buf;
    size_t len, cap;
    int failed; /* out of memory */
} rc_encoder;

static int rc_put(rc_encoder *e, uint8_t byte) {
    if (e->len == e->cap) {
        size_t cap = e->cap ? 2 * e->cap : 4096;
        uint8_t *grown = (uint8_t *)realloc(e->buf, cap);
        if (!grown) {
            e->failed = 1;
            return 0;
        }
        e->buf = grown;
        e->cap = cap;
    }
    e->buf[e->len++] = byte;
    return 1;
}

static void rc_encoder_init(rc_encoder *e, size_t capacity_hint) {
    e->low = 0;
    e->range = 0xFFFFFFFFu;
    e->cache = 0;
    e->cache_size = 1;
    e->len = 0;
    e->failed = 0;
    e->cap = capacity_hint < 64 ? 64 : capacity_hint;
    e->buf = (uint8_t *)malloc(e->cap);
    if (!e->buf) {
        e->cap = 0;
        e->failed = 1;
    }
}

static void rc_shift_low(rc_encoder *e) {
    if ((uint32_t)e->low < 0xFF000000u || (e->low >> 32) != 0) {
        uint8_t carry = (uint8_t)(e->low >> 32);
        uint8_t temp = e->cache;
        do {
            rc_put(e, (uint8_t)(temp + carry));
            temp = 0xFF;
        } while (--e->cache_size != 0);
        e->cache = (uint8_t)(e->low >> 24);
    }
    e->cache_size++;
    e->low = (e->low & 0x00FFFFFFu) << 8;
}

static inline void rc_encode_bit(rc_encoder *e, uint32_t p1, int bit) {
    uint32_t bound = (e->range >> RC_PROB_BITS) * p1;
    if (bit) {
        e->range = bound;
    } else {
        e->low += bound;
        e->range -= bound;
    }
    while (e->range < RC_TOP) {
        e->range <<= 8;
        rc_shift_low(e);
    }
}

static void rc_encoder_finish(rc_encoder *e) {
    for (int i = 0; i < 5; i++) rc_shift_low(e);
}

typedef struct {
    uint32_t range, code;
    const uint8_t *buf;
    size_t len, pos;
    size_t overrun; /* bytes asked for past the end */
} rc_decoder;

static inline uint8_t rc_next(rc_decoder *d) {
    if (d->pos < d->len) return d->buf[d->pos++];
    d->overrun++;
    return 0;
}

static void rc_decoder_init(rc_decoder *d, const uint8_t *buf, size_t len) {
    d->buf = buf;
    d->len = len;
    d->pos = 0;
    d->overrun = 0;
    d->range = 0xFFFFFFFFu;
    d->code = 0;
    for (int i = 0; i < 5; i++) d->code = (d->code << 8) | rc_next(d);
}

static inline int rc_decode_bit(rc_decoder *d, uint32_t p1) {
    uint32_t bound = (d->range >> RC_PROB_BITS) * p1;
    int bit;
    if (d->code < bound) {
        d->range = bound;
        bit = 1;
    } else {
        d->code -= bound;
        d->range -= bound;
        bit = 0;
    }
    while (d->range < RC_TOP) {
        d->range <<= 8;
        d->code = (d->code << 8) | rc_next(d);
    }
    return bit;
}

/* Multi-symbol coding (version 7): the symbol owns [lo, hi) of 2^15, the same coder state as the
 * binary decisions. */
static inline void rc_encode_range(rc_encoder *e, uint32_t lo, uint32_t hi) {
    const uint32_t r = e->range >> 15;
    e->low += (uint64_t)r * lo;
    e->range = r * (hi - lo);
    while (e->range < RC_TOP) {
        e->range <<= 8;
        rc_shift_low(e);
    }
}

/* Where the next symbol lies in 2^15. The range is >= 2^24, so the divisor is >= 2^9; a crafted
 * stream may point past 2^15 - 1, which is clamped (it decodes to the last symbol). */
static inline uint32_t rc_decode_target(const rc_decoder *d) {
    const uint32_t v = d->code / (d->range >> 15);
    return v < 32767u ? v : 32767u;
}

static inline void rc_decode_range(rc_decoder *d, uint32_t lo, uint32_t hi) {
    const uint32_t r = d->range >> 15;
    d->code -= r * lo;
    d->range = r * (hi - lo);
    while (d->range < RC_TOP) {
        d->range <<= 8;
        d->code = (d->code << 8) | rc_next(d);
    }
}

#endif
