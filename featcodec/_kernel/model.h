/* Adaptive binary probabilities: one estimate per channel and context, backed by one shared by
 * all channels of the map.
 *
 * A channel's own estimate starts empty and learns fast (rate 1/(n + 1.5) for its first
 * events, then a fixed 1/32); the shared one learns from every channel (down to 1/128). The
 * probability coded with leans on the shared estimate until the channel has seen a few events
 * in that context (weight n / (n + 6)), so maps with many small channels (14 x 14, 7 x 7) code
 * well from their first symbols. Encoder and decoder run exactly the same integer arithmetic. */
#ifndef FEATCODEC_MODEL_H
#define FEATCODEC_MODEL_H

#include <stdint.h>

typedef struct {
    uint16_t p; /* P(bit = 1), 16 bits */
    uint16_t n; /* events seen, saturating */
} bit_state;

#define P_MIN 48
#define P_MAX (65536 - 48)
#define CHANNEL_FINAL 32
#define SHARED_FINAL 128
#define WEIGHT_FULL 64 /* events after which the weight table is flat */

typedef struct {
    uint32_t channel_rate[CHANNEL_FINAL + 1]; /* 2^16 / (n + 1.5), then 2^16 / 32 */
    uint32_t shared_rate[SHARED_FINAL + 1];
    uint32_t weight[WEIGHT_FULL + 1]; /* 2^8 · n / (n + 6) */
} model_tables;

static void model_tables_init(model_tables *t) {
    for (int n = 0; n <= CHANNEL_FINAL; n++) {
        double r = n < CHANNEL_FINAL ? 1.0 / (n + 1.5) : 1.0 / CHANNEL_FINAL;
        if (r < 1.0 / CHANNEL_FINAL) r = 1.0 / CHANNEL_FINAL;
        t->channel_rate[n] = (uint32_t)(65536.0 * r);
    }
    for (int n = 0; n <= SHARED_FINAL; n++) {
        double r = 1.0 / (n + 1.5);
        if (r < 1.0 / SHARED_FINAL) r = 1.0 / SHARED_FINAL;
        t->shared_rate[n] = (uint32_t)(65536.0 * r);
    }
    for (int n = 0; n <= WEIGHT_FULL; n++) t->weight[n] = (uint32_t)(256.0 * n / (n + 6.0));
}

static void bit_states_init(bit_state *s, size_t count) {
    for (size_t i = 0; i < count; i++) {
        s[i].p = 32768;
        s[i].n = 0;
    }
}

/* The probability to code with, from a channel's and the shared estimate. */
static inline uint32_t model_p(const model_tables *t, const bit_state *own, const bit_state *shared) {
    int32_t n = own->n < WEIGHT_FULL ? own->n : WEIGHT_FULL;
    int32_t p = (int32_t)shared->p + ((((int32_t)own->p - (int32_t)shared->p) * (int32_t)t->weight[n]) >> 8);
    return (uint32_t)(p < P_MIN ? P_MIN : (p > P_MAX ? P_MAX : p));
}

static inline void adapt(bit_state *s, int bit, uint32_t rate) {
    int32_t target = bit ? 65535 : 0;
    int32_t p = (int32_t)s->p + (int32_t)(((int64_t)(target - (int32_t)s->p) * rate) >> 16);
    s->p = (uint16_t)(p < P_MIN ? P_MIN : (p > P_MAX ? P_MAX : p));
}

static inline void model_update(const model_tables *t, bit_state *own, bit_state *shared, int bit) {
    adapt(own, bit, t->channel_rate[own->n < CHANNEL_FINAL ? own->n : CHANNEL_FINAL]);
    adapt(shared, bit, t->shared_rate[shared->n < SHARED_FINAL ? shared->n : SHARED_FINAL]);
    if (own->n < 65535) own->n++;
    if (shared->n < 65535) shared->n++;
}

#endif
