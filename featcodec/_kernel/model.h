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
    uint16_t n; /* events seen, saturating at N_TOP */
} bit_state;

#define P_MIN 48
#define P_MAX (65536 - 48)
#define CHANNEL_FINAL 32
#define SHARED_FINAL 128
#define WEIGHT_FULL 64 /* events after which the weight table is flat */

/* Event counts saturate at N_TOP, above every point where a rate or weight still changes, so
 * each table is indexed by the count itself (no clamping on the coding path). */
#define N_TOP 255

typedef struct {
    uint32_t channel_rate[N_TOP + 1]; /* 2^15 / (n + 1.5), from n = CHANNEL_FINAL on 2^15 / 32 */
    uint32_t shared_rate[N_TOP + 1];
    uint32_t weight[N_TOP + 1]; /* 2^8 · n / (n + 6), flat from n = WEIGHT_FULL on */
    uint16_t next[N_TOP + 1];   /* n + 1, saturating */
} model_tables;

static void model_tables_init(model_tables *t) {
    for (int n = 0; n <= N_TOP; n++) {
        int c = n < CHANNEL_FINAL ? n : CHANNEL_FINAL, h = n < SHARED_FINAL ? n : SHARED_FINAL;
        int w = n < WEIGHT_FULL ? n : WEIGHT_FULL;
        double r = c < CHANNEL_FINAL ? 1.0 / (c + 1.5) : 1.0 / CHANNEL_FINAL;
        if (r < 1.0 / CHANNEL_FINAL) r = 1.0 / CHANNEL_FINAL;
        t->channel_rate[n] = (uint32_t)(32768.0 * r);
        r = 1.0 / (h + 1.5);
        if (r < 1.0 / SHARED_FINAL) r = 1.0 / SHARED_FINAL;
        t->shared_rate[n] = (uint32_t)(32768.0 * r);
        t->weight[n] = (uint32_t)(256.0 * w / (w + 6.0));
        t->next[n] = (uint16_t)(n < N_TOP ? n + 1 : N_TOP);
    }
}

static void bit_states_init(bit_state *s, size_t count) {
    for (size_t i = 0; i < count; i++) {
        s[i].p = 32768;
        s[i].n = 0;
    }
}

/* The probability to code with, from a channel's and the shared estimate. */
static inline uint32_t model_p(const model_tables *t, const bit_state *own, const bit_state *shared) {
    int32_t p = (int32_t)shared->p + ((((int32_t)own->p - (int32_t)shared->p) * (int32_t)t->weight[own->n]) >> 8);
    return (uint32_t)(p < P_MIN ? P_MIN : (p > P_MAX ? P_MAX : p));
}

/* p moves towards 0 or 65535 by a rate below 2/3, so it never leaves 0 .. 65535 (the coder clamps
 * what it codes with); rates are in 15 bits so the product fits 32 bits. */
static inline void adapt(bit_state *s, int bit, uint32_t rate) {
    int32_t target = bit ? 65535 : 0;
    s->p = (uint16_t)((int32_t)s->p + (((target - (int32_t)s->p) * (int32_t)rate) >> 15));
}

static inline void model_update(const model_tables *t, bit_state *own, bit_state *shared, int bit) {
    adapt(own, bit, t->channel_rate[own->n]);
    adapt(shared, bit, t->shared_rate[shared->n]);
    own->n = t->next[own->n];
    shared->n = t->next[shared->n];
}

#endif

#ifndef FEATCODEC_MIXER
#define FEATCODEC_MIXER
/* Logistic mixing (as in the PAQ family): the coded probability is squash(Σ w_i · stretch(p_i))
 * over the estimates of several context models, with weights learned online per weight set
 * (the decision being coded and whether the neighbourhood is empty), so the coder leans on
 * whichever model predicts this map best. 12-bit probabilities in the stretched domain. */
#define MIX_INPUTS 4
#define MIX_SHIFT 16
#ifndef MIX_LEARN
#define MIX_LEARN 15
#endif

typedef struct {
    int16_t stretch[4096]; /* ln(p / (1 - p)) · 256, p in 1/4096 */
    int16_t squash[4096];  /* inverse, over stretch values -2048 .. 2047 */
} mix_tables;

static void mix_tables_init(mix_tables *t) {
    for (int i = 0; i < 4096; i++) {
        double x = (i - 2048) / 256.0;
        int v = (int)(4096.0 / (1.0 + exp(-x)));
        t->squash[i] = (int16_t)(v < 1 ? 1 : (v > 4095 ? 4095 : v));
    }
    for (int p = 0; p < 4096; p++) {
        double q = (p + 0.5) / 4096.0;
        int v = (int)lround(log(q / (1.0 - q)) * 256.0);
        t->stretch[p] = (int16_t)(v < -2047 ? -2047 : (v > 2047 ? 2047 : v));
    }
}

static inline int squash12(const mix_tables *t, int x) {
    x += 2048;
    return t->squash[x < 0 ? 0 : (x > 4095 ? 4095 : x)];
}

typedef struct {
    int32_t w[MIX_INPUTS];
} mix_weights;

static void mix_weights_init(mix_weights *m, size_t count) {
    for (size_t i = 0; i < count; i++)
        for (int k = 0; k < MIX_INPUTS; k++) m[i].w[k] = (1 << MIX_SHIFT) * 3 / 10;
}

/* p16 estimates in, the mixed P(bit = 1) in 16 bits out; `st` keeps the inputs for mix_update. */
static inline uint32_t mix_p(const mix_tables *t, const mix_weights *m, const uint32_t *p16, int32_t *st) {
    int64_t dot = 0;
    for (int k = 0; k < MIX_INPUTS; k++) {
        st[k] = t->stretch[p16[k] >> 4];
        dot += (int64_t)m->w[k] * st[k];
    }
    int p12 = squash12(t, (int)(dot >> MIX_SHIFT));
    return (uint32_t)p12 << 4 | 8;
}

static inline void mix_update(mix_weights *m, const int32_t *st, uint32_t p16, int bit, int rate) {
    int32_t err = ((bit << 12) - (int32_t)(p16 >> 4)) * rate;
    for (int k = 0; k < MIX_INPUTS; k++) m->w[k] += (st[k] * err) >> MIX_LEARN;
}
#endif
