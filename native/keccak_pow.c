/* ethml native proof-of-work core: Ethereum keccak256 nonce search, scalar, BMI2, AVX2, AVX-512, and hybrids
 * (vector lanes plus one scalar lane).
 * See keccak_pow.h for the message format and the API. One build runs on any x86-64: the SIMD
 * paths carry per-function target attributes and are chosen at run time. */
#include "keccak_pow.h"

#include <string.h>

#include "keccak_rounds.h"

#if defined(__x86_64__) || defined(_M_X64)
#define ETHML_X86 1
#include <immintrin.h>
#endif

static const uint64_t KECCAK_RC[24] = {
    0x0000000000000001ULL, 0x0000000000008082ULL, 0x800000000000808aULL, 0x8000000080008000ULL,
    0x000000000000808bULL, 0x0000000080000001ULL, 0x8000000080008081ULL, 0x8000000000008009ULL,
    0x000000000000008aULL, 0x0000000000000088ULL, 0x0000000080008009ULL, 0x000000008000000aULL,
    0x000000008000808bULL, 0x800000000000008bULL, 0x8000000000008089ULL, 0x8000000000008003ULL,
    0x8000000000008002ULL, 0x8000000000000080ULL, 0x000000000000800aULL, 0x800000008000000aULL,
    0x8000000080008081ULL, 0x8000000000008080ULL, 0x0000000080000001ULL, 0x8000000080008008ULL,
};

#define RATE 136
#define MSG_LEN 84
#define WINDOW_LANE 9
#define WINDOW_OFFSET 20 /* nonce bytes 20..27 = message bytes 72..79 = lane 9 */

static inline uint64_t rol64(uint64_t x, unsigned n) { return n == 0 ? x : (x << n) | (x >> (64 - n)); }

static inline uint64_t bswap64(uint64_t x) { return __builtin_bswap64(x); }

static inline uint64_t load64_le(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static inline void store64_le(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

/* ------------------------------------------------------------------ scalar Keccak-f[1600] */

/* The lane operations on one 64-bit lane: the scalar paths and the extra lane of the hybrid ones. */
#define S_XOR(a, b) ((a) ^ (b))
#define S_XOR5(a, b, c, d, e) ((a) ^ (b) ^ (c) ^ (d) ^ (e))
#define S_ROL(a, n) rol64((a), (n))
#define S_CHI(a, b, c) ((a) ^ (~(b) & (c)))
#define S_SET1(x) ((uint64_t)(x))

#define V uint64_t
#define V_XOR S_XOR
#define V_XOR5 S_XOR5
#define V_ROL S_ROL
#define V_CHI S_CHI
#define V_SET1 S_SET1

static void keccak_f1600(uint64_t *s) {
    uint64_t a0 = s[0], a1 = s[1], a2 = s[2], a3 = s[3], a4 = s[4], a5 = s[5], a6 = s[6], a7 = s[7], a8 = s[8],
             a9 = s[9], a10 = s[10], a11 = s[11], a12 = s[12], a13 = s[13], a14 = s[14], a15 = s[15],
             a16 = s[16], a17 = s[17], a18 = s[18], a19 = s[19], a20 = s[20], a21 = s[21], a22 = s[22],
             a23 = s[23], a24 = s[24];
    uint64_t b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, b10, b11, b12, b13, b14, b15, b16, b17, b18, b19, b20, b21,
        b22, b23, b24, c0, c1, c2, c3, c4, d0, d1, d2, d3, d4;
    uint64_t e0, e1, e2, e3, e4, e5, e6, e7, e8, e9, e10, e11, e12, e13, e14, e15, e16, e17, e18, e19, e20, e21,
        e22, e23, e24;
    for (int r = 0; r < 24; r += 2) {
        uint64_t rc = KECCAK_RC[r];
        KECCAK_ROUND_AE;
        rc = KECCAK_RC[r + 1];
        KECCAK_ROUND_EA;
    }
    s[0] = a0, s[1] = a1, s[2] = a2, s[3] = a3, s[4] = a4, s[5] = a5, s[6] = a6, s[7] = a7, s[8] = a8;
    s[9] = a9, s[10] = a10, s[11] = a11, s[12] = a12, s[13] = a13, s[14] = a14, s[15] = a15, s[16] = a16;
    s[17] = a17, s[18] = a18, s[19] = a19, s[20] = a20, s[21] = a21, s[22] = a22, s[23] = a23, s[24] = a24;
}

void ethml_keccak256(const uint8_t *data, size_t len, uint8_t *out32) {
    uint64_t s[25] = {0};
    uint8_t block[RATE];
    while (len >= RATE) {
        for (int i = 0; i < RATE / 8; i++) s[i] ^= load64_le(data + 8 * i);
        keccak_f1600(s);
        data += RATE;
        len -= RATE;
    }
    memset(block, 0, RATE);
    if (len) memcpy(block, data, len);
    block[len] ^= 0x01;
    block[RATE - 1] ^= 0x80;
    for (int i = 0; i < RATE / 8; i++) s[i] ^= load64_le(block + 8 * i);
    keccak_f1600(s);
    for (int i = 0; i < 4; i++) store64_le(out32 + 8 * i, s[i]);
}

/* ------------------------------------------------------------------------- search context */

typedef struct {
    uint64_t s[25]; /* the padded message block as lanes, window lane 9 zeroed */
    uint64_t kc4, krc1, kc2, kd4;
    uint64_t kb[25]; /* round-0 B lanes that do not depend on the window */
    uint8_t msg[MSG_LEN];
    uint8_t target[32];
    uint64_t target_hi;
} pow_ctx;

static void ctx_init(pow_ctx *ctx, const uint8_t *challenge, const uint8_t *miner, const uint8_t *base_nonce,
                     const uint8_t *target) {
    uint8_t block[RATE];
    memcpy(ctx->msg, challenge, 32);
    memcpy(ctx->msg + 32, miner, 20);
    memcpy(ctx->msg + 52, base_nonce, 32);
    memset(block, 0, RATE);
    memcpy(block, ctx->msg, MSG_LEN);
    block[MSG_LEN] ^= 0x01;
    block[RATE - 1] ^= 0x80;
    for (int i = 0; i < 25; i++) ctx->s[i] = i < RATE / 8 ? load64_le(block + 8 * i) : 0;
    ctx->s[WINDOW_LANE] = 0;

    uint64_t C[5], D[5];
    for (int x = 0; x < 5; x++) C[x] = ctx->s[x] ^ ctx->s[x + 5] ^ ctx->s[x + 10] ^ ctx->s[x + 15] ^ ctx->s[x + 20];
    for (int x = 0; x < 5; x++) D[x] = C[(x + 4) % 5] ^ rol64(C[(x + 1) % 5], 1);
    ctx->kc4 = C[4];
    ctx->krc1 = rol64(C[1], 1);
    ctx->kc2 = C[2];
    ctx->kd4 = D[4];
    memset(ctx->kb, 0, sizeof ctx->kb);
#define PRE_B(j, i, r, x) ctx->kb[j] = rol64(ctx->s[i] ^ D[x], r)
    KECCAK_PRECOMPUTE_B;
#undef PRE_B
    if (target) {
        memcpy(ctx->target, target, 32);
        uint64_t hi = 0;
        for (int i = 0; i < 8; i++) hi = (hi << 8) | target[i];
        ctx->target_hi = hi;
    }
}

static void candidate_nonce(const pow_ctx *ctx, uint64_t counter, uint8_t *nonce32) {
    memcpy(nonce32, ctx->msg + 52, 32);
    for (int i = 0; i < 8; i++) nonce32[WINDOW_OFFSET + i] = (uint8_t)(counter >> (56 - 8 * i));
}

/* The exact test for a candidate whose top word passed: full hash, 256-bit compare. */
static int full_check(const pow_ctx *ctx, uint64_t counter) {
    uint8_t msg[MSG_LEN], hash[32];
    memcpy(msg, ctx->msg, MSG_LEN);
    candidate_nonce(ctx, counter, msg + 52);
    ethml_keccak256(msg, MSG_LEN, hash);
    return memcmp(hash, ctx->target, 32) < 0;
}

/* ---------------------------------------------------------------------------- the paths */

#define VL 1
#define V_LOADU(p) ((p)[0])
#define V_STOREU(p, v) ((p)[0] = (v))

#define PATH_ATTR
#define PATH_NAME(x) scalar_##x
#include "keccak_pow_path.inc"
#undef PATH_ATTR
#undef PATH_NAME

#ifdef ETHML_X86
/* The same code with andn (chi) and rorx (rotations): BMI1 and BMI2. */
#define PATH_ATTR __attribute__((target("bmi,bmi2")))
#define PATH_NAME(x) bmi2_##x
#include "keccak_pow_path.inc"
#undef PATH_ATTR
#undef PATH_NAME
#endif

#undef VL
#undef V_LOADU
#undef V_STOREU
#undef V
#undef V_XOR
#undef V_XOR5
#undef V_ROL
#undef V_CHI
#undef V_SET1

#ifdef ETHML_X86
/* AVX2 rotations: by 1 as an add and an or (the add runs on more ports than the shift), by 8 and 56
 * as one byte shuffle; the others as two shifts and an or. `n` is a constant at every call, so the
 * branches fold away. */
static inline __attribute__((target("avx2"), always_inline)) __m256i avx2_rol(__m256i a, int n) {
    if (n == 1) return _mm256_or_si256(_mm256_add_epi64(a, a), _mm256_srli_epi64(a, 63));
    if (n == 8)
        return _mm256_shuffle_epi8(a, _mm256_setr_epi8(7, 0, 1, 2, 3, 4, 5, 6, 15, 8, 9, 10, 11, 12, 13, 14, 7, 0, 1,
                                                       2, 3, 4, 5, 6, 15, 8, 9, 10, 11, 12, 13, 14));
    if (n == 56)
        return _mm256_shuffle_epi8(a, _mm256_setr_epi8(1, 2, 3, 4, 5, 6, 7, 0, 9, 10, 11, 12, 13, 14, 15, 8, 1, 2, 3,
                                                       4, 5, 6, 7, 0, 9, 10, 11, 12, 13, 14, 15, 8));
    return _mm256_or_si256(_mm256_slli_epi64(a, n), _mm256_srli_epi64(a, 64 - n));
}

#define VL 4
#define V __m256i
#define V_XOR(a, b) _mm256_xor_si256((a), (b))
#define V_XOR5(a, b, c, d, e) V_XOR(V_XOR(V_XOR((a), (b)), V_XOR((c), (d))), (e))
#define V_ROL(a, n) avx2_rol((a), (n))
#define V_CHI(a, b, c) _mm256_xor_si256((a), _mm256_andnot_si256((b), (c)))
#define V_SET1(x) _mm256_set1_epi64x((long long)(x))
#define V_LOADU(p) _mm256_loadu_si256((const __m256i *)(p))
#define V_STOREU(p, v) _mm256_storeu_si256((__m256i *)(p), (v))

#define PATH_ATTR __attribute__((target("avx2")))
#define PATH_NAME(x) avx2_##x
#include "keccak_pow_path.inc"
#undef PATH_ATTR
#undef PATH_NAME

#define PATH_HYBRID
#define PATH_ATTR __attribute__((target("avx2,bmi,bmi2")))
#define PATH_NAME(x) avx2h_##x
#include "keccak_pow_path.inc"
#undef PATH_ATTR
#undef PATH_NAME
#undef PATH_HYBRID

#undef VL
#undef V
#undef V_XOR
#undef V_XOR5
#undef V_ROL
#undef V_CHI
#undef V_SET1
#undef V_LOADU
#undef V_STOREU

#define VL 8
#define V __m512i
#define V_XOR(a, b) _mm512_xor_si512((a), (b))
/* vpternlogq: 0x96 = a ^ b ^ c, 0xD2 = a ^ (~b & c) */
#define V_XOR5(a, b, c, d, e) _mm512_ternarylogic_epi64(_mm512_ternarylogic_epi64((a), (b), (c), 0x96), (d), (e), 0x96)
#define V_ROL(a, n) _mm512_rol_epi64((a), (n))
#define V_CHI(a, b, c) _mm512_ternarylogic_epi64((a), (b), (c), 0xD2)
#define V_SET1(x) _mm512_set1_epi64((long long)(x))
#define V_LOADU(p) _mm512_loadu_si512((const void *)(p))
#define V_STOREU(p, v) _mm512_storeu_si512((void *)(p), (v))

#define PATH_ATTR __attribute__((target("avx512f")))
#define PATH_NAME(x) avx512_##x
#include "keccak_pow_path.inc"
#undef PATH_ATTR
#undef PATH_NAME

#define PATH_HYBRID
#define PATH_ATTR __attribute__((target("avx512f,bmi,bmi2")))
#define PATH_NAME(x) avx512h_##x
#include "keccak_pow_path.inc"
#undef PATH_ATTR
#undef PATH_NAME
#undef PATH_HYBRID
#endif

/* ------------------------------------------------------------------------------ dispatch */

int ethml_pow_path_supported(int path) {
    switch (path) {
        case ETHML_POW_PATH_AUTO:
        case ETHML_POW_PATH_SCALAR:
            return 1;
#ifdef ETHML_X86
        case ETHML_POW_PATH_BMI2:
            __builtin_cpu_init();
            return __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
        case ETHML_POW_PATH_AVX2:
            __builtin_cpu_init();
            return __builtin_cpu_supports("avx2") ? 1 : 0;
        case ETHML_POW_PATH_AVX2_HYBRID:
            return ethml_pow_path_supported(ETHML_POW_PATH_AVX2) && ethml_pow_path_supported(ETHML_POW_PATH_BMI2);
        case ETHML_POW_PATH_AVX512:
            __builtin_cpu_init();
            return __builtin_cpu_supports("avx512f") ? 1 : 0;
        case ETHML_POW_PATH_AVX512_HYBRID:
            return ethml_pow_path_supported(ETHML_POW_PATH_AVX512) && ethml_pow_path_supported(ETHML_POW_PATH_BMI2);
#endif
        default:
            return 0;
    }
}

/* The static preference when nothing was measured (ethml.pow.tune measures and may choose otherwise). */
int ethml_pow_best_path(void) {
    static const int order[] = {ETHML_POW_PATH_AVX512, ETHML_POW_PATH_AVX2_HYBRID, ETHML_POW_PATH_AVX2,
                                ETHML_POW_PATH_BMI2};
    for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
        if (ethml_pow_path_supported(order[i])) return order[i];
    return ETHML_POW_PATH_SCALAR;
}

static int resolve(int path) {
    if (path == ETHML_POW_PATH_AUTO) return ethml_pow_best_path();
    return ethml_pow_path_supported(path) ? path : ETHML_POW_EINVAL;
}

static int range_ok(uint64_t start, uint64_t count) { return count == 0 || count - 1 <= UINT64_MAX - start; }

int ethml_pow_search(int path, const uint8_t *challenge32, const uint8_t *miner20, const uint8_t *base_nonce32,
                     const uint8_t *target32, uint64_t start, uint64_t count, volatile int *stop,
                     uint8_t *nonce_out32, uint64_t *hashes_out) {
    pow_ctx ctx;
    uint64_t found = 0, hashes = 0;
    int rc;
    path = resolve(path);
    if (path == ETHML_POW_EINVAL || !range_ok(start, count)) return ETHML_POW_EINVAL;
    ctx_init(&ctx, challenge32, miner20, base_nonce32, target32);
    switch (path) {
#ifdef ETHML_X86
        case ETHML_POW_PATH_AVX512:
            rc = avx512_search(&ctx, start, count, stop, &found, &hashes);
            break;
        case ETHML_POW_PATH_AVX512_HYBRID:
            rc = avx512h_search(&ctx, start, count, stop, &found, &hashes);
            break;
        case ETHML_POW_PATH_AVX2:
            rc = avx2_search(&ctx, start, count, stop, &found, &hashes);
            break;
        case ETHML_POW_PATH_AVX2_HYBRID:
            rc = avx2h_search(&ctx, start, count, stop, &found, &hashes);
            break;
        case ETHML_POW_PATH_BMI2:
            rc = bmi2_search(&ctx, start, count, stop, &found, &hashes);
            break;
#endif
        default:
            rc = scalar_search(&ctx, start, count, stop, &found, &hashes);
    }
    if (rc == ETHML_POW_FOUND) candidate_nonce(&ctx, found, nonce_out32);
    if (hashes_out) *hashes_out = hashes;
    return rc;
}

int ethml_pow_top64(int path, const uint8_t *challenge32, const uint8_t *miner20, const uint8_t *base_nonce32,
                    uint64_t start, uint64_t count, uint64_t *out) {
    pow_ctx ctx;
    path = resolve(path);
    if (path == ETHML_POW_EINVAL || !range_ok(start, count)) return ETHML_POW_EINVAL;
    ctx_init(&ctx, challenge32, miner20, base_nonce32, NULL);
    switch (path) {
#ifdef ETHML_X86
        case ETHML_POW_PATH_AVX512:
            avx512_top64(&ctx, start, count, out);
            break;
        case ETHML_POW_PATH_AVX512_HYBRID:
            avx512h_top64(&ctx, start, count, out);
            break;
        case ETHML_POW_PATH_AVX2:
            avx2_top64(&ctx, start, count, out);
            break;
        case ETHML_POW_PATH_AVX2_HYBRID:
            avx2h_top64(&ctx, start, count, out);
            break;
        case ETHML_POW_PATH_BMI2:
            bmi2_top64(&ctx, start, count, out);
            break;
#endif
        default:
            scalar_top64(&ctx, start, count, out);
    }
    return 0;
}
