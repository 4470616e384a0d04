/* The lightweight codec's driver: contexts over a channel's raster scan, block skipping for
 * sparse maps, partner channels. See lwcoder.h and docs/FORMAT.md (coder versions 4-6).
 *
 * A symbol s < n is coded as binary decisions "s > k" for k = 0, 1, … until one is 0 (or
 * k = n - 2): most activations are small, so most symbols cost one decision. Contexts:
 *   decision 0: left, top (0..3+), top-left + top-right (0..3+) and the partner's symbol at
 *               the same position (none, 0..3+): 4·4·4·5 = 320 contexts;
 *   decision k: min(k, 7) and the largest of left, top and partner (0..7+), partner or not.
 * Sparse maps (a third or more of their 8 x 8 blocks empty) first code one flag per block
 * (context: left and top block flags), then only the symbols of non-empty blocks.
 *
 * Inter coding (a reference map: the previous sample of a sequence): the reference symbol at
 * the same position stands in for the partner; the third model's context becomes the reference
 * symbol (0..7+) and whether left and top equal their own reference symbols; the mixer's set
 * bit "left and top are 0" becomes "left and top kept their reference value"; and "empty" blocks
 * are blocks equal to the reference (97-98 % of the symbols of a static-camera video are). */
#include "lwcoder.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cdf.h"
#include "model.h"
#include "rangecoder.h"

#define CTX_FIRST 1280
#define CTX_REST (7 * 8 * 2)
#define CTX_BLOCK 4
#define CTX_MODE 1
#define CTX_A (CTX_FIRST + CTX_REST + CTX_BLOCK + CTX_MODE)
#define CTX_REST_BASE CTX_FIRST
#define CTX_BLOCK_BASE (CTX_FIRST + CTX_REST)
/* The second context model: the sum of six neighbours (left, top, top-left, top-right, two to
 * the left, two above) in 9 buckets, with the partner; for later decisions also k. */
#define SUM_BUCKETS 9
#define CTXB_FIRST (SUM_BUCKETS * 5)
#define CTXB_REST (7 * SUM_BUCKETS * 3)
#define CTX_B (CTXB_FIRST + CTXB_REST + CTX_BLOCK)
/* The third: how active this position is in the channels coded so far (their mean symbol,
 * capped at 3, in 8 buckets) with the left + top neighbours and the decision. */
#define CTX_C (8 * 4 * 5 + CTX_BLOCK)
#define CTX_ALL (CTX_A + CTX_B + CTX_C)
/* Version 6 has the first model only, whose decisions "s > k" (k >= 1) also read the six
 * neighbours' sum against 6k (version 5's second model): 112 x 9 contexts. */
#define CTX6_REST (CTX_REST * SUM_BUCKETS)
#define CTX6_BLOCK_BASE (CTX_FIRST + CTX6_REST)
#define CTX6_ALL (CTX6_BLOCK_BASE + CTX_BLOCK)
#define CTX_MAX (CTX6_ALL > CTX_ALL ? CTX6_ALL : CTX_ALL)
#define MIX_SETS (8 * 2 + 1)
#define SKIP_NUM 1 /* block mode when empty blocks >= SKIP_NUM / SKIP_DEN of all */
#define SKIP_DEN 3

#if defined(__GNUC__) || defined(__clang__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#define NOINLINE __attribute__((noinline))
#else
#define ALWAYS_INLINE inline
#define NOINLINE
#endif

/* The coding passes are compiled twice on x86-64 Linux, for AVX2 and for the baseline, and the
 * loader picks one (GCC / Clang function multi-versioning): version 7's 16-lane vectors take
 * half the instructions with AVX2. Integer code: both give the same bytes. */
#if defined(__x86_64__) && defined(__linux__) && !defined(__SANITIZE_ADDRESS__) && !defined(FEATCODEC_BASELINE) && \
    ((defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 6) || (defined(__clang__) && __clang_major__ >= 14))
#define CODING_PASS NOINLINE __attribute__((target_clones("avx2", "default")))
#else
#define CODING_PASS NOINLINE
#endif

static inline int cap(int v, int top) { return v < top ? v : top; }
#define CAP3(v) cap((v), 3)

int lw_check_layout(const lw_layout *l) {
    if (l->channels < 1 || l->height < 1 || l->width < 1 || l->n_symbols < 1 || l->n_symbols > LW_MAX_SYMBOLS)
        return LW_BAD_ARGS;
    if (l->version < LW_VERSION_MIN || l->version > LW_VERSION) return LW_BAD_ARGS;
    if ((uint64_t)l->channels * (uint64_t)l->height * (uint64_t)l->width > ((uint64_t)1 << 40)) return LW_BAD_ARGS;
    int c = l->channels;
    uint8_t *seen = (uint8_t *)calloc((size_t)c, 1);
    if (!seen) return LW_NOMEM;
    int status = LW_OK;
    for (int i = 0; i < c && status == LW_OK; i++) {
        int ch = l->order ? l->order[i] : i;
        if (ch < 0 || ch >= c || seen[ch]) status = LW_BAD_ARGS;
        else if (l->parents && l->parents[ch] >= 0 && (l->parents[ch] >= c || !seen[l->parents[ch]]))
            status = LW_BAD_ARGS; /* a partner must be coded before the channel that reads it */
        else seen[ch] = 1;
        if (status == LW_OK && l->parents && l->parents[ch] < -1) status = LW_BAD_ARGS;
    }
    free(seen);
    if (status == LW_OK && l->reference) {
        const size_t count = (size_t)l->channels * l->height * l->width;
        for (size_t i = 0; i < count; i++)
            if (l->reference[i] >= l->n_symbols) return LW_BAD_ARGS;
    }
    return status;
}

void lw_quantize(const float *values, size_t count, const float *thresholds, int n_thresholds,
                 const uint8_t *cell_to_symbol, uint8_t *symbols) {
    uint8_t cells[256];
    for (size_t start = 0; start < count; start += 256) {
        size_t m = count - start < 256 ? count - start : 256;
        const float *v = values + start;
        memset(cells, 0, sizeof cells);
        for (int t = 0; t < n_thresholds; t++) { /* one compare pass per threshold: vectorises */
            float threshold = thresholds[t];
            for (size_t i = 0; i < m; i++) cells[i] += (uint8_t)(v[i] >= threshold);
        }
        for (size_t i = 0; i < m; i++) symbols[start + i] = cell_to_symbol[cells[i]];
    }
}

void lw_dequantize(const uint8_t *symbols, size_t count, const float *level_of_symbol, int n_symbols,
                   float *values) {
    float table[256] = {0};
    for (int i = 0; i < n_symbols && i < 256; i++) table[i] = level_of_symbol[i];
    for (size_t i = 0; i < count; i++) values[i] = table[symbols[i]];
}

uint32_t lw_checksum(const uint8_t *data, size_t count) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ count;
    size_t i = 0;
    for (; i + 8 <= count; i += 8) {
        uint64_t word;
        memcpy(&word, data + i, 8);
        h = (h ^ word) * 0xFF51AFD7ED558CCDull;
        h ^= h >> 29;
    }
    for (; i < count; i++) h = (h ^ data[i]) * 0x100000001B3ull;
    h ^= h >> 33;
    h *= 0xC4CEB9FE1A85EC53ull;
    h ^= h >> 33;
    return (uint32_t)(h ^ (h >> 32));
}

/* Tables every coder reads and none writes, filled once (lw_init). */
static struct {
    int ready;
    model_tables model;
    cdf_tables cdf;
    mix_tables mix;
    float cost_of[4097]; /* -log2(i / 4096) */
} TABLES;

void lw_init(void) {
    if (TABLES.ready) return;
    model_tables_init(&TABLES.model);
    cdf_tables_init(&TABLES.cdf);
    mix_tables_init(&TABLES.mix);
    for (int i = 0; i <= 4096; i++) TABLES.cost_of[i] = i ? (float)-log2(i / 4096.0) : 16.0f;
    TABLES.ready = 1;
}

/* --- shared between encoder and decoder ------------------------------------------------- */

typedef struct {
    const model_tables *tables;
    const mix_tables *mix;
    mix_weights weights[MIX_SETS];
    bit_state *own;    /* channels x contexts */
    bit_state shared[CTX_MAX];
    size_t contexts;   /* per channel: CTX_ALL, or CTX6_ALL for version 6 */
    uint8_t *rows;     /* three padded rows: two above, above, current */
    uint16_t *activity; /* per position: sum over coded channels of min(symbol, 3) */
    uint8_t *flags;    /* block flags of the channel being coded, padded row above */
    int block_mode;
    double *costs;     /* lw_cost: bits per channel, in place of the range coder */
    const float *cost_of;
    /* version 7: MS_CONTEXTS distributions and their event counts for each of the two channels being
     * coded (a channel's own are needed only while it is coded), then the pooled ones */
    cdf16 *dists;
    uint8_t *events;
} coder_state;

static int ms_state_init(coder_state *s, const lw_layout *l);

/* Version 7 codes alphabets of 3 or more symbols one step per symbol; two symbols are one binary
 * decision already, which version 6's coder does faster. */
static inline int multi_symbol(const lw_layout *l) { return l->version >= 7 && l->n_symbols > 2; }

static int state_init(coder_state *s, const lw_layout *l) {
    lw_init();
    s->tables = &TABLES.model;
    s->mix = &TABLES.mix;
    s->cost_of = TABLES.cost_of;
    mix_weights_init(s->weights, MIX_SETS);
    s->contexts = multi_symbol(l) ? 0 : l->version >= 6 ? CTX6_ALL : CTX_ALL; /* binary decisions' states */
    s->own = (bit_state *)malloc(sizeof(bit_state) * ((size_t)l->channels * s->contexts + 1));
    s->rows = (uint8_t *)calloc(6 * ((size_t)l->width + 4), 1); /* two channels' three rows (version 7) */
    s->activity = (uint16_t *)calloc((size_t)l->height * l->width, sizeof(uint16_t));
    size_t bw = ((size_t)l->width + LW_BLOCK - 1) / LW_BLOCK, bh = ((size_t)l->height + LW_BLOCK - 1) / LW_BLOCK;
    s->flags = (uint8_t *)calloc(2 * (bh + 1) * (bw + 1), 1);
    if (!s->own || !s->rows || !s->flags || !s->activity) return LW_NOMEM;
    bit_states_init(s->own, (size_t)l->channels * s->contexts);
    bit_states_init(s->shared, CTX_MAX);
    return multi_symbol(l) ? ms_state_init(s, l) : LW_OK;
}

static void state_free(coder_state *s) {
    free(s->own);
    free(s->rows);
    free(s->flags);
    free(s->activity);
    free(s->dists);
    free(s->events);
}

static inline int first_context(int left, int top, int top_left, int top_right, int partner) {
    return (((CAP3(left) * 4 + CAP3(top)) * 4 + CAP3(top_left)) * 4 + CAP3(top_right)) * 5 + partner;
}

/* Context of the decision "s > k" (k >= 1) from the largest of left, top and the partner, m.
 * Version 4: m itself (capped at 7). Version 5: k - m, so that above 7 levels, where every
 * decision shares k's context, a flat region of 12s is still told from one of 8s. */
static inline int rest_context(int version, int k, int left, int top, int partner_value, int has_partner) {
    int m = left > top ? left : top;
    if (has_partner && partner_value > m) m = partner_value;
    const int d = k - m;
    const int neighbourhood = version >= 5 ? (d < -3 ? 0 : (d > 3 ? 7 : d + 4)) : cap(m, 7);
    return CTX_REST_BASE + ((cap(k, 7) - 1) * 8 + neighbourhood) * 2 + has_partner;
}

/* Version 5: the six neighbours' sum against 6k, for the decision "s > k" (as rest_context), in 9
 * buckets: <= -12, -11..-6, -5..-3, -2..-1, 0, 1..2, 3..5, 6..11, >= 12. */
static const uint8_t RELATIVE_BUCKET[25] = {0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 3, 3, 4, 5, 5, 6, 6, 6, 7, 7, 7, 7, 7, 7, 8};

static inline int relative_bucket(int sum, int k) {
    const int r = sum - 6 * k;
    return RELATIVE_BUCKET[r < -12 ? 0 : r > 12 ? 24 : r + 12];
}

/* Left, top, top-left, top-right, two to the left, two above (rows padded by 2 on the left). */
static inline int six_sum(const uint8_t *cur, const uint8_t *above, const uint8_t *above2, int x) {
    return cur[x - 1] + above[x] + above[x - 1] + above[x + 1] + cur[x - 2] + above2[x];
}

static const uint8_t SUM_BUCKET[43] = {0, 1, 2, 3, 4, 5, 5, 6, 6, 6, 7, 7, 7, 7, 7, 8, 8, 8, 8, 8, 8, 8,
                                       8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8, 8};

/* One binary decision; encodes `bit` or returns the decoded one. Versions 4-5 mix the three
 * context models; version 6 (`single`) codes with the first model's estimate alone and updates
 * only it: about 2.5x fewer instructions per decision, 0-8 % more bits. */
static ALWAYS_INLINE int code_bit(coder_state *s, bit_state *own, int ctx_a, int ctx_b, int ctx_c, int set, int bit,
                                  rc_encoder *enc, rc_decoder *dec, double *cost, const int single) {
    bit_state *a = own + ctx_a, *sa = s->shared + ctx_a;
    if (single) {
        const uint32_t p1 = model_p(s->tables, a, sa);
        if (enc) rc_encode_bit(enc, p1, bit);
        else if (dec) bit = rc_decode_bit(dec, p1);
        else *cost += s->cost_of[(bit ? p1 : 65536 - p1) >> 4];
        model_update(s->tables, a, sa, bit);
        return bit;
    }
    bit_state *b = own + CTX_A + ctx_b, *sb = s->shared + CTX_A + ctx_b;
    bit_state *cc = own + CTX_A + CTX_B + ctx_c, *sc = s->shared + CTX_A + CTX_B + ctx_c;
    uint32_t p[MIX_INPUTS] = {a->p, sa->p, b->p, cc->p};
    int32_t st[MIX_INPUTS];
    /* a channel's own estimates count only once they have seen something: until then the shared */
    if (a->n == 0) p[0] = sa->p;
    if (b->n == 0) p[2] = sb->p;
    if (cc->n == 0) p[3] = sc->p;
    mix_weights *m = s->weights + set;
    uint32_t pm = mix_p(s->mix, m, p, st);
    if (pm < P_MIN) pm = P_MIN;
    if (pm > P_MAX) pm = P_MAX;
    if (enc) rc_encode_bit(enc, pm, bit);
    else if (dec) bit = rc_decode_bit(dec, pm);
    else *cost += s->cost_of[(bit ? pm : 65536 - pm) >> 4];
    mix_update(m, st, pm, bit, 6);
    model_update(s->tables, a, sa, bit);
    model_update(s->tables, b, sb, bit);
    model_update(s->tables, cc, sc, bit);
    return bit;
}

/* Codes (encode) or decodes every channel; one function so the two cannot drift apart. Inlined
 * into encode_pass, decode_pass and cost_pass, where enc / dec are constants: each gets its own
 * loop with the other modes' branches gone. */
static ALWAYS_INLINE void code_pass(coder_state *s, const lw_layout *l, uint8_t *symbols, const uint8_t *block_flags,
                                    rc_encoder *enc, rc_decoder *dec, const int single) {
    const int encode = dec == NULL;
    const int C = l->channels, H = l->height, W = l->width, n = l->n_symbols;
    const size_t plane = (size_t)H * W, stride = (size_t)W + 4;
    const int bw = (W + LW_BLOCK - 1) / LW_BLOCK, bh = (H + LW_BLOCK - 1) / LW_BLOCK;
    for (int i = 0; i < C; i++) {
        const int c = l->order ? l->order[i] : i;
        bit_state *own = s->own + (size_t)c * s->contexts;
        double *cost = s->costs ? s->costs + c : NULL;
        uint8_t *out = symbols + (size_t)c * plane;
        const uint8_t *ref = l->reference ? l->reference + (size_t)c * plane : NULL;
        /* inter: the reference map is every channel's partner */
        const int has_partner = ref || (l->parents && l->parents[c] >= 0);
        const uint8_t *partner = ref ? ref : has_partner ? symbols + (size_t)l->parents[c] * plane : NULL;
        uint8_t *above2 = s->rows + 2, *above = above2 + stride, *cur = above + stride;
        /* mean of min(symbol, 3) over the i channels coded so far, in eighths of 3 */
        const uint32_t act_scale = i ? (uint32_t)((8u << 16) / (3u * (uint32_t)i)) : 0;
        memset(s->rows, 0, 3 * stride);
        memset(s->flags, 0, (size_t)(bh + 1) * (bw + 1));
        for (int y = 0; y < H; y++) {
            uint8_t *frow = s->flags + (size_t)(y / LW_BLOCK + 1) * (bw + 1) + 1;
            if (s->block_mode && y % LW_BLOCK == 0) {
                const uint8_t *up = frow - (bw + 1);
                for (int bx = 0; bx < bw; bx++) {
                    int ctx = frow[bx - 1] + 2 * up[bx];
                    int flag = encode && block_flags ? block_flags[((size_t)c * bh + y / LW_BLOCK) * bw + bx] : 0;
                    frow[bx] = (uint8_t)code_bit(s, own, (single ? CTX6_BLOCK_BASE : CTX_BLOCK_BASE) + ctx,
                                                 CTXB_FIRST + CTXB_REST + ctx,
                                                 8 * 4 * 5 + ctx, MIX_SETS - 1, flag, enc, dec, cost, single);
                }
            }
            const uint8_t *prow = partner ? partner + (size_t)y * W : NULL;
            const uint8_t *prow_above = ref && y ? prow - W : NULL;
            uint8_t *orow = out + (size_t)y * W;
            const uint16_t *arow = s->activity + (size_t)y * W;
            for (int x = 0; x < W; x++) {
                if (s->block_mode && !frow[x / LW_BLOCK]) {
                    const uint8_t copied = ref ? prow[x] : 0;
                    cur[x] = copied;
                    if (!encode) orow[x] = copied;
                    continue;
                }
                const int left = cur[x - 1], top = above[x];
                const int pv = prow ? prow[x] : 0;
                /* the six neighbours' sum: version 6 reads it only for decisions past the first */
                int sum = single ? 0 : six_sum(cur, above, above2, x);
                const int bucket = single ? 0 : SUM_BUCKET[sum > 42 ? 42 : sum];
                const int pbucket = has_partner ? 1 + CAP3(pv) : 0;
                const int symbol = encode ? orow[x] : 0;
                int empty, ctx_c;
                if (ref) {
                    const int kept_left = left == (x ? prow[x - 1] : 0);
                    const int kept_top = top == (prow_above ? prow_above[x] : 0);
                    empty = kept_left & kept_top;
                    ctx_c = (cap(pv, 7) * 4 + kept_left + 2 * kept_top) * 5;
                } else {
                    const int act = i ? (int)(((uint32_t)arow[x] * act_scale) >> 16) : 0;
                    empty = (left | top) == 0;
                    ctx_c = ((act > 7 ? 7 : act) * 4 + cap(left + top, 3)) * 5;
                }
                int value = 0;
                if (n > 1 && code_bit(s, own, first_context(left, top, above[x - 1], above[x + 1], pbucket),
                             bucket * 5 + pbucket, ctx_c, empty, symbol > 0, enc, dec, cost, single)) {
                    value = 1;
                    if (single) sum = six_sum(cur, above, above2, x);
                    for (int k = 1; k < n - 1; k++) {
                        int prel = !has_partner ? 0 : (pv > k ? 2 : (pv == k ? 1 : 0));
                        const int kb = l->version >= 5 ? relative_bucket(sum, k) : bucket;
                        int ctx_b = CTXB_FIRST + ((cap(k, 7) - 1) * SUM_BUCKETS + kb) * 3 + prel;
                        const int ctx_a = rest_context(l->version, k, left, top, pv, has_partner);
                        if (!code_bit(s, own, single ? CTX_FIRST + (ctx_a - CTX_REST_BASE) * SUM_BUCKETS + kb : ctx_a,
                                      ctx_b, ctx_c + cap(k, 4),
                                      2 * cap(k, 7) + empty, symbol > k, enc, dec, cost, single))
                            break;
                        value = k + 1;
                    }
                }
                cur[x] = (uint8_t)value;
                if (!encode) orow[x] = (uint8_t)value;
            }
            uint8_t *spare = above2; /* rotate: the current row becomes the one above */
            above2 = above;
            above = cur;
            cur = spare;
            memset(cur - 2, 0, stride);
        }
        if (!ref && !single) /* the third model's context */
            for (size_t k = 0; k < plane; k++) s->activity[k] += CAP3(out[k]);
    }
}


/* --- version 7: one multi-symbol step per symbol ------------------------------------------
 *
 * Each symbol is coded in one step with a 16-lane adaptive distribution (cdf.h) instead of
 * one binary decision per "s > k": fewer, branch-free steps, and channels coded two at a time
 * on two range coders (ms_code_pass). The coded distribution is the average of two context
 * models, each with the partner's symbol (none, 0 .. 3, 4+):
 *   A: left, top, top-left, top-right, each capped at 3 (256 x 6: the pattern of small values);
 *   B: the weighted sum 2·left + 2·top + top-left + top-right in 14 buckets and |left - top|
 *      capped at 2 (14 x 3 x 6: the magnitude of large values).
 * A context's first use in a channel starts from the distribution pooled over the channels
 * coded so far (which starts from a prior, ms_prior, and learns from each channel's first
 * MS_POOLED events in the context), so maps with many small channels start warm. Block flags (sparse maps) are two-symbol
 * distributions in four contexts; inter coding reads the reference symbol as the partner.
 * Two-symbol alphabets are coded as version 6 codes them (multi_symbol). */
#define MS_A (256 * 6)
#define MAGNITUDE_BUCKETS 14
#define MS_B (MAGNITUDE_BUCKETS * 3 * 6)
#define MS_BLOCK (MS_A + MS_B)
#define MS_CONTEXTS (MS_BLOCK + CTX_BLOCK)
#define MS_POOLED 64

static const uint8_t MAGNITUDE_BUCKET[91] = { /* 0 .. 5, 6, 7-9, 10-13, 14-19, 20-27, 28-39, 40-51, 52-67, 68+ */
    0, 1, 2, 3, 4, 5, 5, 6, 6, 6, 7, 7, 7, 7, 8, 8, 8, 8, 8, 8, 9, 9, 9,
    9, 9, 9, 9, 9, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11, 11, 11, 11,
    11, 11, 11, 11, 11, 11, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 12, 13,
    13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13, 13,
};

/* exp(-i / 8) in 16 bits, at least 1: a literal table, so the priors are the same integers everywhere */
static const uint16_t EXP_EIGHTHS[128] = {
    65535, 57834, 51039, 45042, 39749, 35078, 30957, 27319, 24109, 21276, 18776, 16570, 14623, 12905, 11388, 10050,
    8869, 7827, 6907, 6096, 5379, 4747, 4190, 3697, 3263, 2879, 2541, 2242, 1979, 1746, 1541, 1360,
    1200, 1059, 935, 825, 728, 642, 567, 500, 442, 390, 344, 303, 268, 236, 209, 184,
    162, 143, 127, 112, 99, 87, 77, 68, 60, 53, 47, 41, 36, 32, 28, 25,
    22, 19, 17, 15, 13, 12, 10, 9, 8, 7, 6, 6, 5, 4, 4, 3,
    3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
};

/* A context's prior (its pooled distribution before any event): P(s) proportional to
 * exp(-|s - m| / w) with m = sum / 6 the neighbours' weighted mean (2·left + 2·top + top-left +
 * top-right = sum) and w = (1 + m) / 2: small symbols next to small ones, spread growing with
 * the magnitude. Integer arithmetic only (the exponent in eighths, rounded). */
static void ms_prior(cdf16 *d, int n, int sum) {
    uint64_t weight[CDF_LANES], total = 0;
    for (int j = 0; j < n; j++) {
        const int distance = 6 * j > sum ? 6 * j - sum : sum - 6 * j;
        const int eighths = (16 * distance + (6 + sum) / 2) / (6 + sum);
        total += weight[j] = EXP_EIGHTHS[eighths < 127 ? eighths : 127];
    }
    const uint64_t top = cdf_top(n);
    uint64_t below = 0;
    for (int j = 0; j < CDF_LANES; j++) {
        if (j < n - 1) below += weight[j];
        d->c[j] = (uint16_t)(j >= n - 1 ? top : top * below / total);
    }
}

static int ms_state_init(coder_state *s, const lw_layout *l) {
    const size_t count = 3 * (size_t)MS_CONTEXTS; /* two channels', then the pooled ones */
    s->dists = (cdf16 *)aligned_alloc(sizeof(cdf16), count * sizeof(cdf16));
    s->events = (uint8_t *)calloc(count, 1);
    if (!s->dists || !s->events) return LW_NOMEM;
    cdf16 *pooled = s->dists + 2 * MS_CONTEXTS;
    for (int k = 0; k < MS_A; k++) { /* ((left·4 + top)·4 + top-left)·4 + top-right, then the partner */
        const int r = k / 6, left = r / 64, top = (r / 16) % 4, top_left = (r / 4) % 4, top_right = r % 4;
        ms_prior(pooled + k, l->n_symbols, 2 * left + 2 * top + top_left + top_right);
    }
    int bucket_start[MAGNITUDE_BUCKETS + 1]; /* each bucket's first sum, read off MAGNITUDE_BUCKET */
    bucket_start[MAGNITUDE_BUCKETS] = (int)sizeof MAGNITUDE_BUCKET;
    for (int sum = (int)sizeof MAGNITUDE_BUCKET - 1; sum >= 0; sum--) bucket_start[MAGNITUDE_BUCKET[sum]] = sum;
    for (int k = MS_A; k < MS_BLOCK; k++) { /* the middle of the magnitude bucket */
        const int bucket = (k - MS_A) / 18;
        ms_prior(pooled + k, l->n_symbols, (bucket_start[bucket] + bucket_start[bucket + 1] - 1) / 2);
    }
    for (int k = MS_BLOCK; k < MS_CONTEXTS; k++) cdf_init(pooled + k, 2);
    return LW_OK;
}

/* Context k of a channel learns the coded symbol, and the pooled one while k is among the
 * channel's first MS_POOLED events there. */
static ALWAYS_INLINE void ms_learn(const cdf_tables *t, cdf16 *own, uint8_t *seen, cdf16 *pooled, uint8_t *pooled_seen,
                                   int k, int symbol, const v16u *top) {
    cdf_adapt(t, own + k, symbol, t->own_shift[seen[k]], top);
    if (seen[k] < MS_POOLED) {
        cdf_adapt(t, pooled + k, symbol, t->pooled_shift[pooled_seen[k]], top);
        pooled_seen[k] = t->next[pooled_seen[k]];
    }
    seen[k] = t->next[seen[k]];
}

/* One symbol (< n) with the average of contexts ca and cb (equal for block flags); encodes
 * `symbol` or returns the decoded one. */
static ALWAYS_INLINE int code_symbol(coder_state *s, cdf16 *own, uint8_t *seen, cdf16 *pooled, uint8_t *pooled_seen,
                                     int ca, int cb, const v16u *top, int symbol, rc_encoder *enc,
                                     rc_decoder *dec, double *cost) {
    const cdf_tables *t = &TABLES.cdf;
    cdf16 *a = own + ca, *b = own + cb;
    if (!seen[ca]) a->c = pooled[ca].c; /* a context's first use in this channel */
    if (!seen[cb]) b->c = pooled[cb].c;
    v16u cum = ((a->c >> 1) + (b->c >> 1)) + t->minf;
    if (dec) symbol = cdf_find(&cum, rc_decode_target(dec));
    const uint32_t lo = symbol ? cum[symbol - 1] : 0, hi = cum[symbol];
    if (enc) rc_encode_range(enc, lo, hi);
    else if (dec) rc_decode_range(dec, lo, hi);
    else *cost += s->cost_of[(hi - lo) >> 3];
    ms_learn(t, own, seen, pooled, pooled_seen, ca, symbol, top);
    if (cb != ca) ms_learn(t, own, seen, pooled, pooled_seen, cb, symbol, top);
    return symbol;
}

/* Version 7 codes channels two at a time, symbol by symbol in turn, each of the pair with its own
 * range coder (the second into a second stream): a decoder's steps wait on the symbol before
 * (its context), so two independent chains keep the CPU busy where one leaves it waiting. A
 * channel whose partner is the one just before it is coded alone. */
typedef struct {
    cdf16 *own;
    uint8_t *seen, *out, *rows, *above, *cur, *flags, *frow, *orow;
    const uint8_t *ref, *partner, *prow;
    int channel, has_partner;
    double *cost;
    rc_encoder *enc;
    rc_decoder *dec;
} ms_lane;

typedef struct {
    coder_state *s;
    const lw_layout *l;
    uint8_t *symbols;
    const uint8_t *block_flags;
    cdf16 *pooled;
    uint8_t *pooled_seen;
    v16u top, flag_top;
    int bw, bh;
    size_t plane, stride;
} ms_pass;

/* Starts channel c in slot 0 or 1 (its rows, flags and distributions, every context unseen). */
static ALWAYS_INLINE void lane_start(const ms_pass *p, ms_lane *lane, int c, int slot, rc_encoder *enc,
                                     rc_decoder *dec) {
    const lw_layout *l = p->l;
    uint8_t *rows = p->s->rows + 3 * p->stride * slot;
    uint8_t *flags = p->s->flags + (size_t)(p->bh + 1) * (p->bw + 1) * slot;
    lane->channel = c;
    lane->own = p->s->dists + (size_t)slot * MS_CONTEXTS;
    lane->seen = p->s->events + (size_t)slot * MS_CONTEXTS;
    memset(lane->seen, 0, MS_CONTEXTS);
    lane->cost = p->s->costs ? p->s->costs + c : NULL;
    lane->out = p->symbols + (size_t)c * p->plane;
    lane->ref = l->reference ? l->reference + (size_t)c * p->plane : NULL;
    lane->has_partner = lane->ref || (l->parents && l->parents[c] >= 0);
    lane->partner = lane->ref ? lane->ref : lane->has_partner ? p->symbols + (size_t)l->parents[c] * p->plane : NULL;
    lane->rows = rows;
    lane->above = rows + 2;
    lane->cur = lane->above + p->stride;
    lane->flags = flags;
    lane->enc = enc;
    lane->dec = dec;
    memset(rows, 0, 3 * p->stride);
    memset(flags, 0, (size_t)(p->bh + 1) * (p->bw + 1));
}

/* The block flags of a band (at its first row) and the row's pointers. */
static ALWAYS_INLINE void lane_row(const ms_pass *p, ms_lane *lane, int y) {
    const int W = p->l->width, bw = p->bw;
    lane->frow = lane->flags + (size_t)(y / LW_BLOCK + 1) * (bw + 1) + 1;
    if (p->s->block_mode && y % LW_BLOCK == 0) {
        const uint8_t *up = lane->frow - (bw + 1);
        for (int bx = 0; bx < bw; bx++) {
            const int ctx = MS_BLOCK + lane->frow[bx - 1] + 2 * up[bx];
            const size_t at = ((size_t)lane->channel * p->bh + y / LW_BLOCK) * bw + bx;
            const int flag = !lane->dec && p->block_flags ? p->block_flags[at] : 0;
            lane->frow[bx] = (uint8_t)code_symbol(p->s, lane->own, lane->seen, p->pooled, p->pooled_seen, ctx, ctx,
                                                  &p->flag_top, flag, lane->enc, lane->dec, lane->cost);
        }
    }
    lane->prow = lane->partner ? lane->partner + (size_t)y * W : NULL;
    lane->orow = lane->out + (size_t)y * W;
}

static ALWAYS_INLINE void lane_symbol(const ms_pass *p, ms_lane *lane, int x) {
    const int decode = lane->dec != NULL;
    uint8_t *cur = lane->cur, *above = lane->above;
    if (p->s->block_mode && !lane->frow[x / LW_BLOCK]) {
        const uint8_t copied = lane->ref ? lane->prow[x] : 0;
        cur[x] = copied;
        if (decode) lane->orow[x] = copied;
        return;
    }
    const int left = cur[x - 1], up = above[x], up_left = above[x - 1], up_right = above[x + 1];
    const int partner_bucket = lane->has_partner ? 1 + cap(lane->prow[x], 4) : 0;
    const int ca = (((CAP3(left) * 4 + CAP3(up)) * 4 + CAP3(up_left)) * 4 + CAP3(up_right)) * 6 + partner_bucket;
    const int spread = cap(left > up ? left - up : up - left, 2);
    const int cb = MS_A + (MAGNITUDE_BUCKET[2 * left + 2 * up + up_left + up_right] * 3 + spread) * 6 + partner_bucket;
    int value = decode ? 0 : lane->orow[x];
    value = code_symbol(p->s, lane->own, lane->seen, p->pooled, p->pooled_seen, ca, cb, &p->top, value, lane->enc,
                        lane->dec, lane->cost);
    cur[x] = (uint8_t)value;
    if (decode) lane->orow[x] = (uint8_t)value;
}

static ALWAYS_INLINE void lane_row_end(const ms_pass *p, ms_lane *lane) {
    uint8_t *spare = lane->above; /* rotate: the current row becomes the one above */
    lane->above = lane->cur;
    lane->cur = spare;
    memset(spare - 2, 0, p->stride);
}

/* code_pass for version 7 (n >= 3): the same scan, block flags and partners, one step per symbol,
 * channels in pairs on coders 0 and 1 (enc / dec: two each, or NULL for the cost). */
static ALWAYS_INLINE void ms_code_pass(coder_state *s, const lw_layout *l, uint8_t *symbols, const uint8_t *block_flags,
                                       rc_encoder *enc, rc_decoder *dec) {
    const int C = l->channels, H = l->height, W = l->width;
    ms_pass p = {s, l, symbols, block_flags, s->dists + 2 * MS_CONTEXTS, s->events + 2 * MS_CONTEXTS,
                 {0}, {0}, (W + LW_BLOCK - 1) / LW_BLOCK, (H + LW_BLOCK - 1) / LW_BLOCK, (size_t)H * W, (size_t)W + 4};
    for (int j = 0; j < CDF_LANES; j++) {
        p.top[j] = cdf_top(l->n_symbols);
        p.flag_top[j] = cdf_top(2);
    }
    ms_lane first, second;
    memset(&second, 0, sizeof second); /* set when a pair starts; zeroed for the compiler's sake */
    for (int i = 0; i < C;) {
        const int c = l->order ? l->order[i] : i;
        const int d = i + 1 < C ? (l->order ? l->order[i + 1] : i + 1) : -1;
        const int paired = d >= 0 && !(l->parents && l->parents[d] == c);
        lane_start(&p, &first, c, 0, enc, dec);
        if (paired) lane_start(&p, &second, d, 1, enc ? enc + 1 : NULL, dec ? dec + 1 : NULL);
        for (int y = 0; y < H; y++) {
            lane_row(&p, &first, y);
            if (paired) {
                lane_row(&p, &second, y);
                for (int x = 0; x < W; x++) {
                    lane_symbol(&p, &first, x);
                    lane_symbol(&p, &second, x);
                }
                lane_row_end(&p, &second);
            } else {
                for (int x = 0; x < W; x++) lane_symbol(&p, &first, x);
            }
            lane_row_end(&p, &first);
        }
        i += 1 + paired;
    }
}

static CODING_PASS void encode_pass(coder_state *s, const lw_layout *l, const uint8_t *symbols,
                                 const uint8_t *block_flags, rc_encoder *enc) {
    if (multi_symbol(l)) ms_code_pass(s, l, (uint8_t *)symbols, block_flags, enc, NULL);
    else if (l->version >= 6) code_pass(s, l, (uint8_t *)symbols, block_flags, enc, NULL, 1);
    else code_pass(s, l, (uint8_t *)symbols, block_flags, enc, NULL, 0);
}

static CODING_PASS void decode_pass(coder_state *s, const lw_layout *l, uint8_t *symbols, rc_decoder *dec) {
    if (multi_symbol(l)) ms_code_pass(s, l, symbols, NULL, NULL, dec);
    else if (l->version >= 6) code_pass(s, l, symbols, NULL, NULL, dec, 1);
    else code_pass(s, l, symbols, NULL, NULL, dec, 0);
}

static CODING_PASS void cost_pass(coder_state *s, const lw_layout *l, const uint8_t *symbols) {
    if (multi_symbol(l)) ms_code_pass(s, l, (uint8_t *)symbols, NULL, NULL, NULL);
    else if (l->version >= 6) code_pass(s, l, (uint8_t *)symbols, NULL, NULL, NULL, 1);
    else code_pass(s, l, (uint8_t *)symbols, NULL, NULL, NULL, 0);
}

/* The layout, and every symbol inside the alphabet (what the encoder and the cost both need). */
static int check_symbols(const lw_layout *l, const uint8_t *symbols) {
    int status = lw_check_layout(l);
    if (status != LW_OK) return status;
    size_t count = (size_t)l->channels * l->height * l->width;
    for (size_t i = 0; i < count; i++)
        if (symbols[i] >= l->n_symbols) return LW_BAD_ARGS;
    return LW_OK;
}

/* --- encoder ------------------------------------------------------------------------------ */

int lw_encode(const lw_layout *l, const uint8_t *symbols, uint8_t **out, size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    int status = check_symbols(l, symbols);
    if (status != LW_OK) return status;
    const int C = l->channels, H = l->height, W = l->width;
    const size_t plane = (size_t)H * W;
    const int bw = (W + LW_BLOCK - 1) / LW_BLOCK, bh = (H + LW_BLOCK - 1) / LW_BLOCK;
    uint8_t *block_flags = (uint8_t *)calloc((size_t)C * bh * bw, 1);
    coder_state s;
    memset(&s, 0, sizeof s);
    if (!block_flags || state_init(&s, l) != LW_OK) {
        free(block_flags);
        state_free(&s);
        return LW_NOMEM;
    }
    size_t empty = 0;
    for (int c = 0; c < C; c++) {
        const uint8_t *p = symbols + (size_t)c * plane;
        const uint8_t *r = l->reference ? l->reference + (size_t)c * plane : NULL;
        uint8_t *f = block_flags + (size_t)c * bh * bw;
        for (int y = 0; y < H; y++) {
            const uint8_t *row = p + (size_t)y * W;
            uint8_t *frow = f + (size_t)(y / LW_BLOCK) * bw;
            if (r) {
                const uint8_t *rrow = r + (size_t)y * W;
                for (int x = 0; x < W; x++) frow[x / LW_BLOCK] |= (uint8_t)(row[x] != rrow[x]);
            } else {
                for (int x = 0; x < W; x++) frow[x / LW_BLOCK] |= (uint8_t)(row[x] != 0);
            }
        }
        for (int b = 0; b < bh * bw; b++) empty += !f[b];
    }
    s.block_mode = empty * SKIP_DEN >= (size_t)C * bh * bw * SKIP_NUM;
    /* version 7 (multi_symbol): two coders, the stream their bytes after the first's length (LE32) */
    const int coders = multi_symbol(l) ? 2 : 1;
    rc_encoder enc[2];
    for (int k = 0; k < coders; k++) rc_encoder_init(&enc[k], plane * C / 8 / coders + 64);
    rc_encode_bit(&enc[0], 32768, s.block_mode);
    encode_pass(&s, l, symbols, block_flags, enc);
    free(block_flags);
    state_free(&s);
    int failed = 0;
    for (int k = 0; k < coders; k++) {
        rc_encoder_finish(&enc[k]);
        failed |= enc[k].failed;
    }
    if (coders == 2 && !failed) {
        const size_t first = enc[0].len, total = 4 + enc[0].len + enc[1].len;
        uint8_t *joined = first <= 0xFFFFFFFFu ? (uint8_t *)malloc(total) : NULL;
        if (joined) {
            for (int b = 0; b < 4; b++) joined[b] = (uint8_t)(first >> (8 * b));
            memcpy(joined + 4, enc[0].buf, first);
            memcpy(joined + 4 + first, enc[1].buf, enc[1].len);
        }
        free(enc[0].buf);
        enc[0].buf = joined;
        enc[0].len = total;
        failed = !joined;
    }
    if (coders == 2) free(enc[1].buf);
    if (failed) {
        free(enc[0].buf);
        return LW_NOMEM;
    }
    *out = enc[0].buf;
    *out_len = enc[0].len;
    return LW_OK;
}

int lw_cost(const lw_layout *l, const uint8_t *symbols, double *bits) {
    int status = check_symbols(l, symbols);
    if (status != LW_OK) return status;
    const int C = l->channels;
    coder_state s;
    memset(&s, 0, sizeof s);
    if (state_init(&s, l) != LW_OK) {
        state_free(&s);
        return LW_NOMEM;
    }
    for (int c = 0; c < C; c++) bits[c] = 0;
    s.costs = bits;
    s.block_mode = 0; /* the cost of every symbol, as a dense map codes them */
    cost_pass(&s, l, symbols);
    state_free(&s);
    return LW_OK;
}

/* --- decoder ------------------------------------------------------------------------------ */

int lw_decode(const lw_layout *l, const uint8_t *in, size_t in_len, uint8_t *symbols) {
    int status = lw_check_layout(l);
    if (status != LW_OK) return status;
    /* version 7: two coders' streams, the first's length (LE32) in front */
    const int coders = multi_symbol(l) ? 2 : 1;
    const uint8_t *part[2] = {in, NULL};
    size_t part_len[2] = {in_len, 0};
    if (coders == 2) {
        if (in_len < 4) return LW_CORRUPT;
        const size_t first = (size_t)in[0] | (size_t)in[1] << 8 | (size_t)in[2] << 16 | (size_t)in[3] << 24;
        if (first > in_len - 4) return LW_CORRUPT;
        part[0] = in + 4;
        part_len[0] = first;
        part[1] = in + 4 + first;
        part_len[1] = in_len - 4 - first;
    }
    for (int k = 0; k < coders; k++) /* a coder's first byte is always 0, and it flushes 5 */
        if (part_len[k] < 5 || part[k][0] != 0) return LW_CORRUPT;
    coder_state s;
    memset(&s, 0, sizeof s);
    if (state_init(&s, l) != LW_OK) {
        state_free(&s);
        return LW_NOMEM;
    }
    memset(symbols, 0, (size_t)l->channels * l->height * l->width);
    rc_decoder dec[2];
    for (int k = 0; k < coders; k++) rc_decoder_init(&dec[k], part[k], part_len[k]);
    s.block_mode = rc_decode_bit(&dec[0], 32768);
    decode_pass(&s, l, symbols, dec);
    state_free(&s);
    /* A stream lw_encode wrote ends where the decoder stops reading: nothing asked past its end,
     * at most the flushed bytes left over. */
    for (int k = 0; k < coders; k++)
        if (dec[k].overrun || part_len[k] - dec[k].pos > 8) return LW_CORRUPT;
    return LW_OK;
}
