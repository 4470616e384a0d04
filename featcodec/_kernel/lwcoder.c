/* The lightweight codec's driver: contexts over a channel's raster scan, block skipping for
 * sparse maps, partner channels. See lwcoder.h and docs/FORMAT.md (coder version 4).
 *
 * A symbol s < n is coded as binary decisions "s > k" for k = 0, 1, … until one is 0 (or
 * k = n - 2): most activations are small, so most symbols cost one decision. Contexts:
 *   decision 0: left, top (0..3+), top-left + top-right (0..3+) and the partner's symbol at
 *               the same position (none, 0..3+): 4·4·4·5 = 320 contexts;
 *   decision k: min(k, 7) and the largest of left, top and partner (0..7+), partner or not.
 * Sparse maps (a third or more of their 8 x 8 blocks empty) first code one flag per block
 * (context: left and top block flags), then only the symbols of non-empty blocks. */
#include "lwcoder.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "rangecoder.h"

#define CTX_FIRST 320
#define CTX_REST (7 * 8 * 2)
#define CTX_BLOCK 4
#define CTX_MODE 1
#define CTX_ALL (CTX_FIRST + CTX_REST + CTX_BLOCK + CTX_MODE)
#define CTX_REST_BASE CTX_FIRST
#define CTX_BLOCK_BASE (CTX_FIRST + CTX_REST)
#define SKIP_NUM 1 /* block mode when empty blocks >= SKIP_NUM / SKIP_DEN of all */
#define SKIP_DEN 3

static inline int cap(int v, int top) { return v < top ? v : top; }
#define CAP3(v) cap((v), 3)

int lw_check_layout(const lw_layout *l) {
    if (l->channels < 1 || l->height < 1 || l->width < 1 || l->n_symbols < 1 || l->n_symbols > LW_MAX_SYMBOLS)
        return LW_BAD_ARGS;
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

/* --- shared between encoder and decoder ------------------------------------------------- */

typedef struct {
    model_tables tables;
    bit_state *own;    /* channels x CTX_ALL */
    bit_state shared[CTX_ALL];
    uint8_t *rows;     /* two padded rows: previous, current */
    uint8_t *flags;    /* block flags of the channel being coded, padded row above */
    int block_mode;
    double *costs;     /* lw_cost: bits per channel, in place of the range coder */
    float cost_of[4097];
} coder_state;

static int state_init(coder_state *s, const lw_layout *l) {
    model_tables_init(&s->tables);
    s->own = (bit_state *)malloc(sizeof(bit_state) * (size_t)l->channels * CTX_ALL);
    s->rows = (uint8_t *)calloc(2 * ((size_t)l->width + 2), 1);
    size_t bw = ((size_t)l->width + LW_BLOCK - 1) / LW_BLOCK, bh = ((size_t)l->height + LW_BLOCK - 1) / LW_BLOCK;
    s->flags = (uint8_t *)calloc((bh + 1) * (bw + 1), 1);
    if (!s->own || !s->rows || !s->flags) return LW_NOMEM;
    bit_states_init(s->own, (size_t)l->channels * CTX_ALL);
    bit_states_init(s->shared, CTX_ALL);
    return LW_OK;
}

static void state_free(coder_state *s) {
    free(s->own);
    free(s->rows);
    free(s->flags);
}

static inline int first_context(int left, int top, int top_left, int top_right, int partner) {
    int diag = cap(CAP3(top_left) + CAP3(top_right), 3);
    return ((CAP3(left) * 4 + CAP3(top)) * 4 + diag) * 5 + partner;
}

static inline int rest_context(int k, int left, int top, int partner_value, int has_partner) {
    int m = left > top ? left : top;
    if (has_partner && partner_value > m) m = partner_value;
    return CTX_REST_BASE + ((cap(k, 7) - 1) * 8 + cap(m, 7)) * 2 + has_partner;
}

/* Codes (ENCODE) or decodes every channel; one function so the two cannot drift apart. */
#define CODE_BIT(bit_expr, ctx)                                                         \
    do {                                                                                \
        bit_state *own_ = own + (ctx), *sh_ = s->shared + (ctx);                        \
        uint32_t p_ = model_p(&s->tables, own_, sh_);                                   \
        if (ENCODE) {                                                                   \
            bit_ = (bit_expr);                                                          \
            if (enc) rc_encode_bit(enc, p_, bit_);                                      \
            else s->costs[c] += s->cost_of[(bit_ ? p_ : 65536 - p_) >> 4];              \
        } else {                                                                        \
            bit_ = rc_decode_bit(dec, p_);                                              \
        }                                                                               \
        model_update(&s->tables, own_, sh_, bit_);                                      \
    } while (0)

#define DEFINE_PASS(NAME, ENCODE_VALUE)                                                                          \
    static void NAME(coder_state *s, const lw_layout *l, uint8_t *symbols, const uint8_t *block_flags,          \
                     rc_encoder *enc, rc_decoder *dec) {                                                        \
        enum { ENCODE = ENCODE_VALUE };                                                                         \
        const int C = l->channels, H = l->height, W = l->width, n = l->n_symbols;                               \
        const size_t plane = (size_t)H * W;                                                                     \
        const int bw = (W + LW_BLOCK - 1) / LW_BLOCK, bh = (H + LW_BLOCK - 1) / LW_BLOCK;                       \
        uint8_t *prev = s->rows + 1, *cur = s->rows + W + 3;                                                   \
        int bit_;                                                                                               \
        (void)block_flags;                                                                                      \
        for (int i = 0; i < C; i++) {                                                                           \
            const int c = l->order ? l->order[i] : i;                                                          \
            bit_state *own = s->own + (size_t)c * CTX_ALL;                                                      \
            uint8_t *out = symbols + (size_t)c * plane;                                                         \
            const int has_partner = l->parents && l->parents[c] >= 0;                                          \
            const uint8_t *partner = has_partner ? symbols + (size_t)l->parents[c] * plane : NULL;             \
            memset(s->rows, 0, 2 * ((size_t)W + 2));                                                            \
            memset(s->flags, 0, (size_t)(bh + 1) * (bw + 1));                                                   \
            for (int y = 0; y < H; y++) {                                                                       \
                uint8_t *frow = s->flags + (size_t)(y / LW_BLOCK + 1) * (bw + 1) + 1;                           \
                if (s->block_mode && y % LW_BLOCK == 0) {                                                       \
                    const uint8_t *above = frow - (bw + 1);                                                     \
                    for (int bx = 0; bx < bw; bx++) {                                                           \
                        int ctx = CTX_BLOCK_BASE + frow[bx - 1] + 2 * above[bx];                                \
                        CODE_BIT(block_flags[((size_t)c * bh + y / LW_BLOCK) * bw + bx], ctx);                 \
                        frow[bx] = (uint8_t)bit_;                                                               \
                    }                                                                                           \
                }                                                                                               \
                const uint8_t *prow = partner ? partner + (size_t)y * W : NULL;                                 \
                uint8_t *orow = out + (size_t)y * W;                                                            \
                for (int x = 0; x < W; x++) {                                                                   \
                    if (s->block_mode && !frow[x / LW_BLOCK]) {                                                 \
                        cur[x] = 0;                                                                             \
                        if (!ENCODE) orow[x] = 0;                                                               \
                        continue;                                                                               \
                    }                                                                                           \
                    const int left = cur[x - 1], top = prev[x];                                                 \
                    const int pv = prow ? prow[x] : 0;                                                          \
                    int symbol = ENCODE ? orow[x] : 0;                                                          \
                    CODE_BIT(symbol > 0, first_context(left, top, prev[x - 1], prev[x + 1],                    \
                                                       has_partner ? 1 + CAP3(pv) : 0));                        \
                    int value = 0;                                                                              \
                    if (bit_) {                                                                                 \
                        value = 1;                                                                              \
                        for (int k = 1; k < n - 1; k++) {                                                       \
                            CODE_BIT(symbol > k, rest_context(k, left, top, pv, has_partner));                 \
                            if (!bit_) break;                                                                   \
                            value = k + 1;                                                                      \
                        }                                                                                       \
                    }                                                                                           \
                    cur[x] = (uint8_t)value;                                                                    \
                    if (!ENCODE) orow[x] = (uint8_t)value;                                                      \
                }                                                                                               \
                uint8_t *swap = prev;                                                                           \
                prev = cur;                                                                                     \
                cur = swap;                                                                                     \
                cur[-1] = 0;                                                                                    \
            }                                                                                                   \
        }                                                                                                       \
    }

DEFINE_PASS(encode_pass, 1)
DEFINE_PASS(decode_pass, 0)

/* --- encoder ------------------------------------------------------------------------------ */

int lw_encode(const lw_layout *l, const uint8_t *symbols, uint8_t **out, size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    int status = lw_check_layout(l);
    if (status != LW_OK) return status;
    const int C = l->channels, H = l->height, W = l->width;
    const size_t plane = (size_t)H * W;
    for (size_t i = 0; i < (size_t)C * plane; i++)
        if (symbols[i] >= l->n_symbols) return LW_BAD_ARGS;
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
        uint8_t *f = block_flags + (size_t)c * bh * bw;
        for (int y = 0; y < H; y++) {
            const uint8_t *row = p + (size_t)y * W;
            uint8_t *frow = f + (size_t)(y / LW_BLOCK) * bw;
            for (int x = 0; x < W; x++) frow[x / LW_BLOCK] |= (uint8_t)(row[x] != 0);
        }
        for (int b = 0; b < bh * bw; b++) empty += !f[b];
    }
    s.block_mode = empty * SKIP_DEN >= (size_t)C * bh * bw * SKIP_NUM;
    rc_encoder enc;
    rc_encoder_init(&enc, plane * C / 8 + 64);
    rc_encode_bit(&enc, 32768, s.block_mode);
    encode_pass(&s, l, (uint8_t *)symbols, block_flags, &enc, NULL);
    rc_encoder_finish(&enc);
    free(block_flags);
    state_free(&s);
    if (enc.failed) {
        free(enc.buf);
        return LW_NOMEM;
    }
    *out = enc.buf;
    *out_len = enc.len;
    return LW_OK;
}

int lw_cost(const lw_layout *l, const uint8_t *symbols, double *bits) {
    int status = lw_check_layout(l);
    if (status != LW_OK) return status;
    const int C = l->channels, H = l->height, W = l->width;
    const size_t plane = (size_t)H * W;
    for (size_t i = 0; i < (size_t)C * plane; i++)
        if (symbols[i] >= l->n_symbols) return LW_BAD_ARGS;
    coder_state s;
    memset(&s, 0, sizeof s);
    if (state_init(&s, l) != LW_OK) {
        state_free(&s);
        return LW_NOMEM;
    }
    for (int i = 0; i <= 4096; i++) s.cost_of[i] = i ? (float)-log2(i / 4096.0) : 16.0f;
    for (int c = 0; c < C; c++) bits[c] = 0;
    s.costs = bits;
    s.block_mode = 0; /* the cost of every symbol, as a dense map codes them */
    encode_pass(&s, l, (uint8_t *)symbols, NULL, NULL, NULL);
    state_free(&s);
    return LW_OK;
}

/* --- decoder ------------------------------------------------------------------------------ */

int lw_decode(const lw_layout *l, const uint8_t *in, size_t in_len, uint8_t *symbols) {
    int status = lw_check_layout(l);
    if (status != LW_OK) return status;
    if (in_len < 5 || in[0] != 0) return LW_CORRUPT; /* the coder's first byte is always 0 */
    coder_state s;
    memset(&s, 0, sizeof s);
    if (state_init(&s, l) != LW_OK) {
        state_free(&s);
        return LW_NOMEM;
    }
    memset(symbols, 0, (size_t)l->channels * l->height * l->width);
    rc_decoder dec;
    rc_decoder_init(&dec, in, in_len);
    s.block_mode = rc_decode_bit(&dec, 32768);
    decode_pass(&s, l, symbols, NULL, NULL, &dec);
    state_free(&s);
    /* A stream lw_encode wrote ends where the decoder stops reading: nothing asked past its end,
     * at most the flushed bytes left over. */
    if (dec.overrun) return LW_CORRUPT;
    if (in_len - dec.pos > 8) return LW_CORRUPT;
    return LW_OK;
}
