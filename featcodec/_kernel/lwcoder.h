/* The lightweight codec's coding kernel: quantization and context-adaptive binary range coding
 * of (C, H, W) symbol maps, encoder and decoder side by side. Python (featcodec.entropy) holds
 * the configuration, the header and the errors; this code does the loops over elements. */
#ifndef FEATCODEC_LWCODER_H
#define FEATCODEC_LWCODER_H

#include <stddef.h>
#include <stdint.h>

#define LW_MAX_SYMBOLS 16
#define LW_BLOCK 8

enum { LW_OK = 0, LW_NOMEM = 1, LW_BAD_ARGS = 2, LW_CORRUPT = 3 };

#define LW_VERSION_MIN 4
#define LW_VERSION 7

typedef struct {
    int channels, height, width, n_symbols;
    /* coder version: 4; 5 (contexts of the decisions "s > k" relative to k); 6 (version 5's
     * contexts, the first context model alone: faster, a few % larger); 7 (one multi-symbol
     * step per symbol: faster than 6, smaller than 6) */
    int version;
    const int32_t *parents; /* per channel: partner channel coded earlier, or -1; NULL: none */
    const int32_t *order;   /* coding order of the channels (a permutation); NULL: 0 .. C-1 */
    /* Inter coding (sequences): the previous sample's symbols (C·H·W, each < n_symbols), or NULL.
     * With it, the co-located reference symbol takes the partner's place in the contexts, the
     * third model reads it and whether the left and top neighbours kept their reference value,
     * and block skipping copies blocks equal to the reference instead of zero blocks. */
    const uint8_t *reference;
} lw_layout;

/* Fills the read-only tables; call once before coding from several threads (the Python module
 * does at import). The coding functions call it too, for single-threaded C users. */
void lw_init(void);

/* Checks what the coder relies on: sizes, alphabet, order a permutation, every partner coded
 * before the channel that reads it. */
int lw_check_layout(const lw_layout *layout);

/* cells: for each value the number of thresholds at or below it, mapped through cell_to_symbol. */
void lw_quantize(const float *values, size_t count, const float *thresholds, int n_thresholds,
                 const uint8_t *cell_to_symbol, uint8_t *symbols);
void lw_dequantize(const uint8_t *symbols, size_t count, const float *level_of_symbol, int n_symbols,
                   float *values);

/* A 32-bit checksum of symbols (64-bit multiply-xor over 8-byte words, folded). */
uint32_t lw_checksum(const uint8_t *data, size_t count);

/* Encode symbols (C·H·W bytes, each < n_symbols) into a malloc'd buffer the caller frees. */
int lw_encode(const lw_layout *layout, const uint8_t *symbols, uint8_t **out, size_t *out_len);

/* Decode into symbols (C·H·W bytes). LW_CORRUPT when the stream is not one lw_encode wrote
 * for this layout (as far as the coder can tell: the caller also checks the checksum). */
int lw_decode(const lw_layout *layout, const uint8_t *in, size_t in_len, uint8_t *symbols);

/* Ideal code length in bits of each channel (no block skipping): what calibration compares. */
int lw_cost(const lw_layout *layout, const uint8_t *symbols, double *bits_per_channel);

#endif
