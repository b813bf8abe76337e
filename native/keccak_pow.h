/* ethml native proof-of-work core.
 *
 * message = challenge (32) | miner (20) | nonce (32, big-endian)   -- 84 bytes, one Keccak block
 * hash    = Ethereum keccak256(message)                            -- pad 0x01 .. 0x80
 * valid   = hash (as a big-endian uint256) < target
 *
 * A search varies the 64-bit nonce window at nonce bytes 20..27 (message bytes 72..79, exactly
 * state lane 9); the other 24 nonce bytes come from `base_nonce`. Candidate `counter` is the nonce
 * with bytes 20..27 = counter (big-endian), i.e. (base & ~(2^64-1 << 32)) | counter << 32.
 */
#ifndef ETHML_KECCAK_POW_H
#define ETHML_KECCAK_POW_H

#include <stddef.h>
#include <stdint.h>

#define ETHML_POW_PATH_AUTO 0
#define ETHML_POW_PATH_SCALAR 1
#define ETHML_POW_PATH_AVX2 2
#define ETHML_POW_PATH_AVX512 3
#define ETHML_POW_PATH_BMI2 4
#define ETHML_POW_PATH_AVX2_HYBRID 5
#define ETHML_POW_PATH_AVX512_HYBRID 6

#define ETHML_POW_EXHAUSTED 0
#define ETHML_POW_FOUND 1
#define ETHML_POW_STOPPED 2
#define ETHML_POW_EINVAL (-1)

/* How many candidates run between two looks at the stop flag. */
#define ETHML_POW_STOP_INTERVAL 65536

/* 1 when this CPU and build can run `path` (AUTO is always 1). */
int ethml_pow_path_supported(int path);

/* The preferred supported path when nothing was measured (ethml.pow.tune measures every path). */
int ethml_pow_best_path(void);

/* Ethereum keccak256 of any input (any length). */
void ethml_keccak256(const uint8_t *data, size_t len, uint8_t *out32);

/* Search counters [start, start + count) in order; return the first valid one.
 * stop: polled every ETHML_POW_STOP_INTERVAL candidates; non-zero ends the search (may be NULL).
 * Returns ETHML_POW_FOUND (nonce_out set), ETHML_POW_EXHAUSTED, ETHML_POW_STOPPED, or
 * ETHML_POW_EINVAL (unsupported path, or start + count beyond 2^64). *hashes_out = candidates tried. */
int ethml_pow_search(int path, const uint8_t *challenge32, const uint8_t *miner20, const uint8_t *base_nonce32,
                     const uint8_t *target32, uint64_t start, uint64_t count, volatile int *stop,
                     uint8_t *nonce_out32, uint64_t *hashes_out);

/* For parity tests: the most significant 64 bits of the hash of `count` consecutive candidates,
 * computed by `path` exactly as the search computes them. Returns 0, or ETHML_POW_EINVAL. */
int ethml_pow_top64(int path, const uint8_t *challenge32, const uint8_t *miner20, const uint8_t *base_nonce32,
                    uint64_t start, uint64_t count, uint64_t *out);

#endif
