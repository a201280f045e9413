/* Code-block kernels with AVX2 (rbe/code.h): the Viterbi step vectorised over states, and the
 * products that generate eight tiles' weights side by side, one tile row per lane. */
#include <string.h>

#include "code_private.h"
#include "kernel_common.h"

#ifdef RBE_HAVE_X86_SIMD

/* ---- the encoder ------------------------------------------------------------------------ */

/* rbe_code_step_scalar eight values of m at a time: the same floats (the squared error
 * multiplied and added separately, no fused multiply-add) and the same comparisons. */
static RBE_TARGET_AVX2 void rbe_code_step_avx2(const rbe_trellis *t, const float *prior,
                                               float *best, uint8_t *from, float y)
{
    const int k = t->bits, L = t->state_bits;
    const int64_t half = (int64_t)1 << (L - k), groups = (int64_t)1 << k;
    if (half < 8) {
        rbe_code_step_scalar(t, prior, best, from, y);
        return;
    }
    /* lane i of eight states from s0 (a multiple of 8) reads prior[(s0 >> k) + (i >> k)] */
    const __m256i spread = _mm256_srli_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), k);
    const __m256 target = _mm256_set1_ps(y);
    for (int64_t m = 0; m < half; m += 8) {
        __m256 b = _mm256_setzero_ps();
        __m256i arg = _mm256_setzero_si256();
        for (int64_t l = 0; l < groups; ++l) {
            const int64_t s = l * half + m;
            const __m256 d = _mm256_sub_ps(target, _mm256_loadu_ps(
                t->values + rbe_code_value_slot(s, k, L)));
            const __m256 before = _mm256_permutevar8x32_ps(
                _mm256_loadu_ps(prior + rbe_code_cost_slot(s >> k, k, L)), spread);
            const __m256 c = _mm256_add_ps(before, _mm256_mul_ps(d, d));
            if (l == 0) {
                b = c;
                continue;
            }
            const __m256 lower = _mm256_cmp_ps(c, b, _CMP_LT_OQ);
            b = _mm256_blendv_ps(b, c, lower);
            arg = _mm256_blendv_epi8(arg, _mm256_set1_epi32((int)l), _mm256_castps_si256(lower));
        }
        _mm256_storeu_ps(best + rbe_code_cost_slot(m, k, L), b);
        const __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(arg),
                                               _mm256_extracti128_si256(arg, 1));
        _mm_storel_epi64((__m128i *)(from + m), _mm_packus_epi16(words, words));
    }
}

RBE_TARGET_AVX2 double rbe_code_viterbi_avx2(const rbe_trellis *t, const float *x, int64_t steps,
                                             int64_t overlap, uint32_t *states, void *work)
{
    return rbe_code_viterbi_with(rbe_code_step_avx2, t, x, steps, overlap, states, work);
}

/* ---- the products ----------------------------------------------------------------------- */

/* The stream words of the group's eight tiles in tile column tj, lane by lane: words[8 w + i]
 * is word w of lane i's stream, w = 0 .. 8 k, the last a copy of the first (the wrap-around).
 * Lanes past the last tile row get zeros. Eight words of the eight lanes at a time, transposed
 * in registers. */
static RBE_TARGET_AVX2 void rbe_code_gather_words(const rbe_code_plan *p, int64_t group,
                                                  int64_t tj, uint32_t *words)
{
    const uint8_t *streams[RBE_CODE_LANES];
    for (int lane = 0; lane < RBE_CODE_LANES; ++lane) {
        const int64_t row = group * RBE_CODE_LANES + lane;
        streams[lane] = row < p->tile_rows ? rbe_code_stream(p, row, tj) : NULL;
    }
    for (int q = 0; q < p->bits; ++q) {
        __m256i r[8], t[8], u[8];
        for (int lane = 0; lane < RBE_CODE_LANES; ++lane)
            r[lane] = streams[lane] ? _mm256_loadu_si256((const __m256i *)(streams[lane] + 32 * q))
                                    : _mm256_setzero_si256();
        for (int i = 0; i < 8; i += 2) {
            t[i] = _mm256_unpacklo_epi32(r[i], r[i + 1]);
            t[i + 1] = _mm256_unpackhi_epi32(r[i], r[i + 1]);
        }
        for (int i = 0; i < 8; i += 4)
            for (int j = 0; j < 2; ++j) {
                u[i + 2 * j] = _mm256_unpacklo_epi64(t[i + j], t[i + j + 2]);
                u[i + 2 * j + 1] = _mm256_unpackhi_epi64(t[i + j], t[i + j + 2]);
            }
        for (int j = 0; j < 4; ++j) {
            _mm256_store_si256((__m256i *)(words + 8 * (8 * q + j)),
                               _mm256_permute2x128_si256(u[j], u[j + 4], 0x20));
            _mm256_store_si256((__m256i *)(words + 8 * (8 * q + j + 4)),
                               _mm256_permute2x128_si256(u[j], u[j + 4], 0x31));
        }
    }
    _mm256_store_si256((__m256i *)(words + 64 * p->bits),
                       _mm256_load_si256((const __m256i *)words));
}

/* raw[16 lane + r] = acc[r] - offset (lane = tile row of the group, r = row in the tile). */
static RBE_TARGET_AVX2 void rbe_code_store_rows(const __m256 *acc, float offset, float *raw)
{
    float lanes[RBE_CODE_TILE][RBE_CODE_LANES];
    for (int r = 0; r < RBE_CODE_TILE; ++r) _mm256_storeu_ps(lanes[r], acc[r]);
    for (int lane = 0; lane < RBE_CODE_LANES; ++lane)
        for (int r = 0; r < RBE_CODE_TILE; ++r)
            raw[lane * RBE_CODE_TILE + r] = lanes[r][lane] - offset;
}

/* acc (ROWS x 16 panel rows) = sum_c x[b][c] panel[c][16 block ..], ROWS rows of x. */
RBE_INLINE RBE_TARGET_AVX2 void rbe_code_tile_rows(int rows, const float *panel, int columns,
                                                    int block, const float *x, int64_t ldx,
                                                    float *out, int64_t ldo)
{
    __m256 acc[6][2];
    for (int b = 0; b < rows; ++b) {
        acc[b][0] = _mm256_loadu_ps(out + b * ldo + 16 * block);
        acc[b][1] = _mm256_loadu_ps(out + b * ldo + 16 * block + 8);
    }
    for (int c = 0; c < columns; ++c) {
        const __m256 w0 = _mm256_load_ps(panel + c * RBE_CODE_GROUP + 16 * block);
        const __m256 w1 = _mm256_load_ps(panel + c * RBE_CODE_GROUP + 16 * block + 8);
        for (int b = 0; b < rows; ++b) {
            const __m256 xb = _mm256_broadcast_ss(x + b * ldx + c);
            acc[b][0] = _mm256_fmadd_ps(w0, xb, acc[b][0]);
            acc[b][1] = _mm256_fmadd_ps(w1, xb, acc[b][1]);
        }
    }
    for (int b = 0; b < rows; ++b) {
        _mm256_storeu_ps(out + b * ldo + 16 * block, acc[b][0]);
        _mm256_storeu_ps(out + b * ldo + 16 * block + 8, acc[b][1]);
    }
}

/* out[b][8 r + lane] += x rows times the panel, six rows of x at a time (the last tile of the
 * batch with what is left, each count compiled on its own so that its sums stay in registers),
 * all of the panel's rows for each six rows of x (which stay in L1 while the panel does). */
static RBE_TARGET_AVX2 void rbe_code_panel_product(const float *panel, int columns,
                                                   const float *x, int64_t ldx, int64_t batch,
                                                   float *out, int64_t ldo)
{
    for (int64_t b = 0; b < batch; b += 6) {
        const float *xb = x + b * ldx;
        float *ob = out + b * ldo;
        for (int block = 0; block < RBE_CODE_GROUP / 16; ++block)
            switch (batch - b < 6 ? batch - b : 6) {
            case 1: rbe_code_tile_rows(1, panel, columns, block, xb, ldx, ob, ldo); break;
            case 2: rbe_code_tile_rows(2, panel, columns, block, xb, ldx, ob, ldo); break;
            case 3: rbe_code_tile_rows(3, panel, columns, block, xb, ldx, ob, ldo); break;
            case 4: rbe_code_tile_rows(4, panel, columns, block, xb, ldx, ob, ldo); break;
            case 5: rbe_code_tile_rows(5, panel, columns, block, xb, ldx, ob, ldo); break;
            default: rbe_code_tile_rows(6, panel, columns, block, xb, ldx, ob, ldo);
            }
    }
}

/* Each of the batch's rows of 128 sums (stride ld) from the panel order (8 r + lane) to the
 * group's row order (16 lane + r), in place. */
static void rbe_code_unpermute_rows(float *sums, int64_t batch, int64_t ld)
{
    float row[RBE_CODE_GROUP];
    for (int64_t b = 0; b < batch; ++b) {
        float *s = sums + b * ld;
        memcpy(row, s, sizeof(row));
        for (int lane = 0; lane < RBE_CODE_LANES; ++lane)
            for (int r = 0; r < RBE_CODE_TILE; ++r)
                s[lane * RBE_CODE_TILE + r] = row[r * RBE_CODE_LANES + lane];
    }
}

/* The products, compiled once for AVX2 + FMA and once for the CPUs with AVX-512 VNNI and
 * VBMI2, where a window that straddles two words is one concatenating shift and the bytes of a
 * hash sum in one instruction (code_products_avx.h). */
#define RBE_CODE_TARGET RBE_TARGET_AVX2
#define RBE_CODE_FN(name) name##_avx2
#define RBE_CODE_VNNI 0
#include "code_products_avx.h"
#undef RBE_CODE_TARGET
#undef RBE_CODE_FN
#undef RBE_CODE_VNNI

#define RBE_CODE_TARGET RBE_TARGET_AVX512_VNNI
#define RBE_CODE_FN(name) name##_avx512_vnni
#define RBE_CODE_VNNI 1
#include "code_products_avx.h"

#endif
