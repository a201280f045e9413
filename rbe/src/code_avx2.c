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
 * Lanes past the last tile row get zeros. */
static void rbe_code_gather_words(const rbe_code_plan *p, int64_t group, int64_t tj,
                                  uint32_t *words)
{
    const int64_t count = 8 * p->bits;
    for (int lane = 0; lane < RBE_CODE_LANES; ++lane) {
        const int64_t row = group * RBE_CODE_LANES + lane;
        if (row >= p->tile_rows) {
            for (int64_t w = 0; w <= count; ++w) words[8 * w + lane] = 0;
            continue;
        }
        const uint8_t *stream = rbe_code_stream(p, row, tj);
        for (int64_t w = 0; w <= count; ++w) words[8 * w + lane] = rbe_code_word(stream, w, count);
    }
}

/* The centred values of step s = 0 .. 31 of a pair of tile rows whose bits start at `words`
 * (eight lanes). bit, word and shift are compile-time constants once the caller's loop over s
 * is unrolled; a window that ends inside its first word needs one load. */
RBE_INLINE RBE_TARGET_AVX2 __m256 rbe_code_values8(const uint32_t *words, int k, int s,
                                                    __m256i mask)
{
    const int bit = s * k, w = bit >> 5, shift = bit & 31;
    __m256i state = _mm256_srli_epi32(_mm256_load_si256((const __m256i *)(words + 8 * w)), shift);
    if (shift > 32 - RBE_CODE_MAX_STATE_BITS)
        state = _mm256_or_si256(state, _mm256_slli_epi32(
            _mm256_load_si256((const __m256i *)(words + 8 * (w + 1))), 32 - shift));
    state = _mm256_and_si256(state, mask);
    const __m256i hash = _mm256_add_epi32(_mm256_mullo_epi32(state, _mm256_set1_epi32(
                                              (int)RBE_CODE_MUL)),
                                          _mm256_set1_epi32((int)RBE_CODE_ADD));
    /* the four bytes summed: pairs as 16-bit words, then the two words */
    const __m256i pairs = _mm256_maddubs_epi16(hash, _mm256_set1_epi8(1));
    const __m256i sum = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
    return _mm256_cvtepi32_ps(_mm256_sub_epi32(sum, _mm256_set1_epi32((int)RBE_CODE_CENTRE)));
}

/* acc[r] += the products of tile rows r = 2 pair, 2 pair + 1 of eight tiles with x (16
 * columns). Two accumulators per row keep two multiply-add chains in flight. */
RBE_INLINE RBE_TARGET_AVX2 void rbe_code_gemv_pair(const uint32_t *words, int k, int pair,
                                                   const float *x, __m256i mask, __m256 *acc)
{
    const uint32_t *w = words + 8 * (pair * k);    /* 32 steps start on a word */
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
    RBE_UNROLL_STEPS
    for (int s = 0; s < 32; ++s)
        a[(s >> 4) * 2 + (s & 1)] = _mm256_fmadd_ps(rbe_code_values8(w, k, s, mask),
                                                    _mm256_broadcast_ss(x + (s & 15)),
                                                    a[(s >> 4) * 2 + (s & 1)]);
    acc[2 * pair] = _mm256_add_ps(acc[2 * pair], _mm256_add_ps(a[0], a[1]));
    acc[2 * pair + 1] = _mm256_add_ps(acc[2 * pair + 1], _mm256_add_ps(a[2], a[3]));
}

/* raw[16 lane + r] from acc[r] (lane = tile row of the group, r = row in the tile). */
static RBE_TARGET_AVX2 void rbe_code_store_rows(const __m256 *acc, float *raw)
{
    float lanes[RBE_CODE_TILE][RBE_CODE_LANES];
    for (int r = 0; r < RBE_CODE_TILE; ++r) _mm256_storeu_ps(lanes[r], acc[r]);
    for (int lane = 0; lane < RBE_CODE_LANES; ++lane)
        for (int r = 0; r < RBE_CODE_TILE; ++r) raw[lane * RBE_CODE_TILE + r] = lanes[r][lane];
}

RBE_INLINE RBE_TARGET_AVX2 void rbe_code_gemv_k(int k, const rbe_code_plan *p, int64_t group,
                                                int64_t tj0, int64_t tj1, const float *x,
                                                float *raw)
{
    RBE_ALIGN32 uint32_t words[8 * (8 * RBE_CODE_MAX_BITS + 1)];
    const __m256i mask = _mm256_set1_epi32((int)((UINT32_C(1) << p->state_bits) - 1));
    __m256 acc[RBE_CODE_TILE];
    for (int r = 0; r < RBE_CODE_TILE; ++r) acc[r] = _mm256_setzero_ps();
    for (int64_t tj = tj0; tj < tj1; ++tj) {
        rbe_code_gather_words(p, group, tj, words);
        for (int pair = 0; pair < RBE_CODE_TILE / 2; ++pair)
            rbe_code_gemv_pair(words, k, pair, x + tj * RBE_CODE_TILE, mask, acc);
    }
    rbe_code_store_rows(acc, raw);
}

RBE_TARGET_AVX2 void rbe_code_gemv_avx2(const rbe_code_plan *p, int64_t group, int64_t tj0,
                                        int64_t tj1, const float *x, float *raw)
{
    switch (p->bits) {
    case 2: rbe_code_gemv_k(2, p, group, tj0, tj1, x, raw); break;
    case 3: rbe_code_gemv_k(3, p, group, tj0, tj1, x, raw); break;
    default: rbe_code_gemv_k(4, p, group, tj0, tj1, x, raw); break;
    }
}

/* A panel of the group's weights: panel[c][8 r + lane] for RBE_CODE_PANEL_COLUMNS columns c
 * (tile columns tj0 ..), row r of the tile in each lane. */
RBE_INLINE RBE_TARGET_AVX2 void rbe_code_panel_k(int k, const rbe_code_plan *p, int64_t group,
                                                 int64_t tj0, int64_t tiles, float *panel)
{
    RBE_ALIGN32 uint32_t words[8 * (8 * RBE_CODE_MAX_BITS + 1)];
    const __m256i mask = _mm256_set1_epi32((int)((UINT32_C(1) << p->state_bits) - 1));
    for (int64_t tile = 0; tile < tiles; ++tile) {
        rbe_code_gather_words(p, group, tj0 + tile, words);
        float *columns = panel + tile * RBE_CODE_TILE * RBE_CODE_GROUP;
        for (int pair = 0; pair < RBE_CODE_TILE / 2; ++pair) {
            const uint32_t *w = words + 8 * (pair * k);
            RBE_UNROLL_STEPS
            for (int s = 0; s < 32; ++s)
                _mm256_store_ps(columns + (s & 15) * RBE_CODE_GROUP
                                    + (2 * pair + (s >> 4)) * RBE_CODE_LANES,
                                rbe_code_values8(w, k, s, mask));
        }
    }
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
 * batch with what is left, each count compiled on its own so that its sums stay in registers). */
static RBE_TARGET_AVX2 void rbe_code_panel_product(const float *panel, int columns,
                                                   const float *x, int64_t ldx, int64_t batch,
                                                   float *out)
{
    for (int block = 0; block < RBE_CODE_GROUP / 16; ++block)
        for (int64_t b = 0; b < batch; b += 6) {
            const float *xb = x + b * ldx;
            float *ob = out + b * RBE_CODE_GROUP;
            switch (batch - b < 6 ? batch - b : 6) {
            case 1: rbe_code_tile_rows(1, panel, columns, block, xb, ldx, ob, RBE_CODE_GROUP); break;
            case 2: rbe_code_tile_rows(2, panel, columns, block, xb, ldx, ob, RBE_CODE_GROUP); break;
            case 3: rbe_code_tile_rows(3, panel, columns, block, xb, ldx, ob, RBE_CODE_GROUP); break;
            case 4: rbe_code_tile_rows(4, panel, columns, block, xb, ldx, ob, RBE_CODE_GROUP); break;
            case 5: rbe_code_tile_rows(5, panel, columns, block, xb, ldx, ob, RBE_CODE_GROUP); break;
            default: rbe_code_tile_rows(6, panel, columns, block, xb, ldx, ob, RBE_CODE_GROUP);
            }
        }
}

RBE_INLINE RBE_TARGET_AVX2 void rbe_code_gemm_k(int k, const rbe_code_plan *p, int64_t group,
                                                const float *x, int64_t batch, float *raw,
                                                int64_t ldr)
{
    RBE_ALIGN32 float panel[RBE_CODE_PANEL_COLUMNS * RBE_CODE_GROUP];
    const int64_t step = RBE_CODE_PANEL_COLUMNS / RBE_CODE_TILE;
    /* the sums in panel order (8 r + lane), RBE_CODE_GEMM_ROWS rows of x at a time */
    RBE_ALIGN32 float sums[RBE_CODE_GEMM_ROWS * RBE_CODE_GROUP];
    for (int64_t b0 = 0; b0 < batch; b0 += RBE_CODE_GEMM_ROWS) {
        const int64_t rows = batch - b0 < RBE_CODE_GEMM_ROWS ? batch - b0 : RBE_CODE_GEMM_ROWS;
        memset(sums, 0, sizeof(float) * (size_t)(rows * RBE_CODE_GROUP));
        for (int64_t tj = 0; tj < p->tile_cols; tj += step) {
            const int64_t tiles = p->tile_cols - tj < step ? p->tile_cols - tj : step;
            rbe_code_panel_k(k, p, group, tj, tiles, panel);
            rbe_code_panel_product(panel, (int)(tiles * RBE_CODE_TILE),
                                   x + b0 * p->in_padded + tj * RBE_CODE_TILE, p->in_padded, rows,
                                   sums);
        }
        for (int64_t b = 0; b < rows; ++b)
            for (int lane = 0; lane < RBE_CODE_LANES; ++lane)
                for (int r = 0; r < RBE_CODE_TILE; ++r)
                    raw[(b0 + b) * ldr + lane * RBE_CODE_TILE + r] =
                        sums[b * RBE_CODE_GROUP + r * RBE_CODE_LANES + lane];
    }
}

RBE_TARGET_AVX2 void rbe_code_gemm_avx2(const rbe_code_plan *p, int64_t group, const float *x,
                                        int64_t batch, float *raw, int64_t ldr)
{
    switch (p->bits) {
    case 2: rbe_code_gemm_k(2, p, group, x, batch, raw, ldr); break;
    case 3: rbe_code_gemm_k(3, p, group, x, batch, raw, ldr); break;
    default: rbe_code_gemm_k(4, p, group, x, batch, raw, ldr); break;
    }
}

#endif
