/* Seeded mutation fuzzer of the lightweight kernel (no libFuzzer needed: gcc alone).
 *
 *     make fuzz                      # 1,000,000 streams under AddressSanitizer + UBSan
 *     ./fuzz ITERATIONS [SEED]
 *
 * Each iteration makes a random layout (channels, size, alphabet, partner chains, and for a
 * third of them a reference map: inter coding, the reference a slightly changed copy of the
 * symbols) and symbols (dense, sparse or constant), checks that encode -> decode round-trips exactly, then decodes a
 * mutated copy of the stream (bits flipped, bytes overwritten, cut, inserted or appended): the
 * decoder must return LW_OK or LW_CORRUPT and never read or write out of bounds (the
 * sanitizers abort on any such access). Prints what it ran. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lwcoder.h"

static uint64_t state = 88172645463325252ull;
static uint64_t next(void) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}
static int below(int n) { return (int)(next() % (uint64_t)n); }

int main(int argc, char **argv) {
    long iterations = argc > 1 ? atol(argv[1]) : 100000;
    if (argc > 2) state ^= (uint64_t)atoll(argv[2]) * 0x9E3779B97F4A7C15ull;
    lw_init();
    long round_trips = 0, mutated = 0, accepted = 0, rejected = 0;
    for (long it = 0; it < iterations; it++) {
        int c = 1 + below(6), h = 1 + below(20), w = 1 + below(20), n = 1 + below(LW_MAX_SYMBOLS);
        size_t count = (size_t)c * h * w;
        int32_t parents[6], order[6];
        int partnered = below(2);
        for (int k = 0; k < c; k++) {
            order[k] = k; /* partners are earlier channels: the identity order is topological */
            parents[k] = partnered && k > 0 && below(2) ? below(k) : -1;
        }
        uint8_t *symbols = malloc(count), *decoded = malloc(count), *reference = NULL;
        int kind = below(3);
        for (size_t i = 0; i < count; i++)
            symbols[i] = (uint8_t)(kind == 0 ? below(n) : (kind == 1 ? (below(20) ? 0 : below(n)) : n - 1));
        if (below(3) == 0) { /* inter: a reference exactly as large, mostly equal to the symbols */
            reference = malloc(count);
            for (size_t i = 0; i < count; i++) reference[i] = below(10) ? symbols[i] : (uint8_t)below(n);
        }
        lw_layout layout = {c, h, w, n, LW_VERSION_MIN + below(LW_VERSION - LW_VERSION_MIN + 1), partnered ? parents : NULL,
                            partnered ? order : NULL, reference};
        uint8_t *stream;
        size_t len;
        if (lw_encode(&layout, symbols, &stream, &len) != LW_OK) {
            fprintf(stderr, "encode failed at iteration %ld\n", it);
            return 1;
        }
        if (lw_decode(&layout, stream, len, decoded) != LW_OK || memcmp(symbols, decoded, count)) {
            fprintf(stderr, "round trip failed at iteration %ld\n", it);
            return 1;
        }
        round_trips++;
        size_t cap = len + 32;
        uint8_t *bad = malloc(cap);
        memcpy(bad, stream, len);
        size_t bad_len = len;
        switch (below(5)) {
        case 0: bad_len = (size_t)below((int)len); break;                       /* cut */
        case 1: for (int k = 0; k < 1 + below(3); k++) bad[below((int)len)] ^= (uint8_t)(1 << below(8)); break;
        case 2: { size_t at = (size_t)below((int)len);                          /* overwrite */
                  for (size_t k = at; k < at + 8 && k < len; k++) bad[k] = (uint8_t)next(); } break;
        case 3: { size_t at = (size_t)below((int)len + 1), extra = 1 + (size_t)below(16); /* insert */
                  memmove(bad + at + extra, bad + at, len - at);
                  for (size_t k = 0; k < extra; k++) bad[at + k] = (uint8_t)next();
                  bad_len = len + extra; } break;
        default: for (size_t k = 0; k < len; k++) bad[k] = (uint8_t)next(); break; /* garbage */
        }
        /* the decoder gets exactly bad_len bytes: a tight allocation, so ASan sees any over-read */
        uint8_t *tight = malloc(bad_len ? bad_len : 1);
        memcpy(tight, bad, bad_len);
        int status = lw_decode(&layout, tight, bad_len, decoded);
        if (status != LW_OK && status != LW_CORRUPT) {
            fprintf(stderr, "decode returned %d at iteration %ld\n", status, it);
            return 1;
        }
        for (size_t i = 0; status == LW_OK && i < count; i++)
            if (decoded[i] >= n) {
                fprintf(stderr, "decoded symbol outside the alphabet at iteration %ld\n", it);
                return 1;
            }
        mutated++;
        if (status == LW_OK) accepted++;
        else rejected++;
        free(tight);
        free(bad);
        free(stream);
        free(symbols);
        free(decoded);
        free(reference);
    }
    printf("fuzz: %ld round trips, %ld mutated streams decoded (%ld rejected as corrupt, %ld decoded to "
           "some symbols that the checksum then refuses), no crash\n", round_trips, mutated, rejected, accepted);
    return 0;
}
