/* Fast block kernels with AVX2 + FMA: rbe_block_<family>_avx2 and rbe_block_<family>_avx2_vl
 * of rbe/weight.h (the same source, compiled for 16 and for 32 vector registers). */
#include <string.h>

#include "rbe/weight.h"
#include "kernel_common.h"
#include "weight_avx2.h"

#ifdef RBE_HAVE_X86_SIMD

/* Store 8 floats; with stream set, non-temporal when dst is 16-byte aligned (numpy's
 * allocations always are), whole 32 bytes at a time when it is 32-byte aligned. */
static inline RBE_TARGET_AVX2 void rbe_store8(float *dst, __m256 v, int stream)
{
    uintptr_t misalignment = (uintptr_t)dst & 31;
    if (!stream || (misalignment & 15)) {
        _mm256_storeu_ps(dst, v);
    } else if (misalignment == 0) {
        _mm256_stream_ps(dst, v);
    } else {
        _mm_stream_ps(dst, _mm256_castps256_ps128(v));
        _mm_stream_ps(dst + 4, _mm256_extractf128_ps(v, 1));
    }
}

/* Store 4 class groups of 8 lanes (v[p][q] = column 4q + p) as 32 consecutive columns.
 * With stream set, non-temporal stores keep outputs larger than the caches from evicting the
 * tables and from reading every line before writing it. */
static inline RBE_TARGET_AVX2 void rbe_store_interleaved4(float *dst, const __m256 *v, int stream)
{
    __m256 t0 = _mm256_unpacklo_ps(v[0], v[1]), t1 = _mm256_unpackhi_ps(v[0], v[1]);
    __m256 t2 = _mm256_unpacklo_ps(v[2], v[3]), t3 = _mm256_unpackhi_ps(v[2], v[3]);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 out[4] = {_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u2, u3, 0x20),
                     _mm256_permute2f128_ps(u0, u1, 0x31), _mm256_permute2f128_ps(u2, u3, 0x31)};
    for (int k = 0; k < 4; k++) rbe_store8(dst + 8 * k, out[k], stream);
}

/* The same for the last, partial chunk of a row: only columns j0 + 4q + p < w. */
static inline RBE_TARGET_AVX2 void rbe_store_interleaved4_partial(float *row, int j0, int w,
                                                                  const __m256 *v)
{
    float lanes[4][8];
    for (int p = 0; p < 4; p++) _mm256_storeu_ps(lanes[p], v[p]);
    for (int q = 0; q < 8; q++)
        for (int p = 0; p < 4; p++) {
            int j = j0 + 4 * q + p;
            if (j < w) row[j] = lanes[p][q];
        }
}

RBE_INLINE RBE_TARGET_AVX2 void rbe_store_chunk(float *row, int j0, int w, const __m256 *v,
                                                int stream)
{
    if (j0 + 32 <= w) rbe_store_interleaved4(row + j0, v, stream);
    else rbe_store_interleaved4_partial(row, j0, w, v);
}

/* One panel row from the grouped layout [4][g] to natural columns [w]. */
static inline RBE_TARGET_AVX2 void rbe_ungroup_row(const float *grouped, int g, int w, float *row,
                                                   int stream)
{
    for (int q0 = 0; q0 < g; q0 += 8) {
        __m256 v[4];
        for (int p = 0; p < 4; p++) v[p] = _mm256_loadu_ps(grouped + p * g + q0);
        rbe_store_chunk(row, 4 * q0, w, v, stream);
    }
}

/* 8 lanes of one group into the panel buffers; lanes whose b is 0 everywhere skip f, since
 * the weights and both gradients are then exactly 0. */
RBE_INLINE RBE_TARGET_AVX2 void rbe_lanes_avx2(int family, int state, int want_grad,
                                               const rbe_seed_v8 *sv, const rbe_tables *t,
                                               ptrdiff_t src, ptrdiff_t dst, int nvec,
                                               float *pw, float *pr, float *pt)
{
    __m256 zero = _mm256_setzero_ps(), any_b = zero, w[2], gr[2], gt[2], rho[2];
    for (int v = 0; v < nvec; v++) {
        rho[v] = _mm256_loadu_ps(t->rho + src + 8 * v);
        any_b = _mm256_max_ps(any_b, rbe_bd_raw8(sv, rho[v]));
        w[v] = gr[v] = gt[v] = zero;
    }
    if (_mm256_movemask_ps(_mm256_cmp_ps(any_b, zero, _CMP_GT_OQ)))
        for (int v = 0; v < nvec; v++)
            w[v] = rbe_weight8(family, state, want_grad, sv, rho[v],
                               _mm256_loadu_ps(t->sin_phi + src + 8 * v),
                               _mm256_loadu_ps(t->cos_phi + src + 8 * v), &gr[v], &gt[v]);
    for (int v = 0; v < nvec; v++) {
        _mm256_storeu_ps(pw + dst + 8 * v, w[v]);
        if (want_grad) {
            _mm256_storeu_ps(pr + dst + 8 * v, gr[v]);
            _mm256_storeu_ps(pt + dst + 8 * v, gt[v]);
        }
    }
}

/* All groups of one class in rows [i0, i0 + rows) with a fixed state, into the grouped
 * panel buffers (row k of the panel at offset k * 4 * g). Two vectors per step give the
 * long dependency chains of the approximations independent work to overlap with. */
RBE_INLINE RBE_TARGET_AVX2 void rbe_class_avx2(int state, int family, int want_grad, int c,
                                               const rbe_seed_v8 *sv, const rbe_tables *t,
                                               int i0, int rows, float *pw, float *pr,
                                               float *pt)
{
    const int g = t->g;
    for (int k = 0; k < rows; k++) {
        int p = (c + i0 + k) & 3;               /* the group of class c in row i0 + k */
        ptrdiff_t src = ((ptrdiff_t)(i0 + k) * 4 + p) * g, dst = ((ptrdiff_t)k * 4 + p) * g;
        int q0 = 0;
        for (; q0 + 16 <= g; q0 += 16)
            rbe_lanes_avx2(family, state, want_grad, sv, t, src + q0, dst + q0, 2, pw, pr, pt);
        if (q0 < g)
            rbe_lanes_avx2(family, state, want_grad, sv, t, src + q0, dst + q0, 1, pw, pr, pt);
    }
}

/* Panel buffers: grouped rows [RBE_PANEL_ROWS][4][g] of weights and both gradients. */
typedef struct {
    float *w, *dr, *dth;
} rbe_panel;

static inline rbe_panel rbe_panel_at(float *scratch, int g, int index)
{
    ptrdiff_t size = (ptrdiff_t)RBE_PANEL_ROWS * 4 * g;
    float *base = scratch + 3 * size * index;
    rbe_panel p = {base, base + size, base + 2 * size};
    return p;
}

/* Class c of rows [i0, i0 + rows) with its state: one switch, then branch-free loops. */
RBE_INLINE RBE_TARGET_AVX2 void rbe_panel_class_avx2(int family, int want_grad, const rbe_seed32 *s,
                                                     const rbe_seed_v8 *sv, const rbe_tables *t,
                                                     int c, int i0, int rows, rbe_panel b)
{
    RBE_WITH_STATE(s->sel[c], rbe_class_avx2, family, want_grad, c, sv, t, i0, rows, b.w, b.dr,
                   b.dth);
}

static inline RBE_TARGET_AVX2 void rbe_panel_ungroup_avx2(int want_grad, const rbe_tables *t,
                                                          int i0, int rows, rbe_panel b,
                                                          float *W, float *dr, float *dth,
                                                          int stream)
{
    for (int k = 0; k < rows; k++) {
        ptrdiff_t row = (ptrdiff_t)(i0 + k) * t->w, off = (ptrdiff_t)k * 4 * t->g;
        rbe_ungroup_row(b.w + off, t->g, t->w, W + row, stream);
        if (want_grad) {
            rbe_ungroup_row(b.dr + off, t->g, t->w, dr + row, stream);
            rbe_ungroup_row(b.dth + off, t->g, t->w, dth + row, stream);
        }
    }
}

/* dst[q] = src[g - 1 - q] for a whole group (g a multiple of 8). */
static inline RBE_TARGET_AVX2 void rbe_reverse_group(const float *src, float *dst, int g)
{
    const __m256i reverse = _mm256_setr_epi32(7, 6, 5, 4, 3, 2, 1, 0);
    for (int v = 0; v < g; v += 8)
        _mm256_storeu_ps(dst + g - 8 - v,
                         _mm256_permutevar8x32_ps(_mm256_loadu_ps(src + v), reverse));
}

/* Class c of the bottom panel rows [ib, ib + RBE_PANEL_ROWS) copied from the top panel that
 * mirrors them: bottom row ib + k is the point reflection of top row RBE_PANEL_ROWS - 1 - k,
 * its group p that of group 3 - p with the lanes reversed. */
static inline RBE_TARGET_AVX2 void rbe_panel_mirror_avx2(int want_grad, int g, int c, int ib,
                                                         rbe_panel top, rbe_panel bottom)
{
    for (int k = 0; k < RBE_PANEL_ROWS; k++) {
        int p = (c + ib + k) & 3;
        ptrdiff_t dst = ((ptrdiff_t)k * 4 + p) * g;
        ptrdiff_t src = ((ptrdiff_t)(RBE_PANEL_ROWS - 1 - k) * 4 + (3 - p)) * g;
        rbe_reverse_group(top.w + src, bottom.w + dst, g);
        if (want_grad) {
            rbe_reverse_group(top.dr + src, bottom.dr + dst, g);
            rbe_reverse_group(top.dth + src, bottom.dth + dst, g);
        }
    }
}

/* n zeros; non-temporal where stream is set and the address is aligned. */
static inline RBE_TARGET_AVX2 void rbe_fill_zero_avx2(float *dst, ptrdiff_t n, int stream)
{
    if (!stream) {
        memset(dst, 0, (size_t)n * sizeof(float));
        return;
    }
    ptrdiff_t k = 0;
    for (; k < n && ((uintptr_t)(dst + k) & 15); k++) dst[k] = 0.0f;
    for (; k + 8 <= n; k += 8) rbe_store8(dst + k, _mm256_setzero_ps(), 1);
    for (; k < n; k++) dst[k] = 0.0f;
}

/* Class-major evaluation over panels of rows, then a transpose to natural column order.
 *
 * Point symmetry: position (h-1-i, w-1-j) has the same rho and phi + pi, so every state gives
 * it the same weight and gradients as (i, j) (|sin| and |cos| ignore the half turn; the
 * tables are exactly antisymmetric). Its class is (-h - c) mod 4, so when that class has the
 * same state the bottom row is copied from the top one. That covers two of the four classes
 * when h is even, more when states repeat. Used when w is a multiple of 32 (groups fill their
 * vectors); other shapes evaluate every row. */
RBE_INLINE RBE_TARGET_AVX2 void rbe_block_avx2_body(int family, int want_grad,
                                                    const rbe_seed32 *s, const rbe_tables *t,
                                                    float *W, float *dr, float *dth,
                                                    float *scratch, int stream)
{
    const int P = RBE_PANEL_ROWS;
    if (s->r_plus_theta <= 0.0f) {   /* b = 0 everywhere (r, rho >= 0): all outputs are 0 */
        ptrdiff_t n = (ptrdiff_t)t->h * t->w;
        rbe_fill_zero_avx2(W, n, stream);
        if (want_grad) { rbe_fill_zero_avx2(dr, n, stream); rbe_fill_zero_avx2(dth, n, stream); }
        if (stream) _mm_sfence();
        return;
    }
    rbe_seed_v8 sv;
    rbe_seed_v8_init(s, &sv);
    rbe_panel top = rbe_panel_at(scratch, t->g, 0), bottom = rbe_panel_at(scratch, t->g, 1);
    int i0 = 0;
    for (; t->w % 32 == 0 && 2 * (i0 + P) <= t->h; i0 += P) {
        int ib = t->h - i0 - P;
        for (int c = 0; c < 4; c++)
            rbe_panel_class_avx2(family, want_grad, s, &sv, t, c, i0, P, top);
        for (int c = 0; c < 4; c++) {
            if (s->sel[c] == s->sel[(-t->h - c) & 3])
                rbe_panel_mirror_avx2(want_grad, t->g, c, ib, top, bottom);
            else
                rbe_panel_class_avx2(family, want_grad, s, &sv, t, c, ib, P, bottom);
        }
        rbe_panel_ungroup_avx2(want_grad, t, i0, P, top, W, dr, dth, stream);
        rbe_panel_ungroup_avx2(want_grad, t, ib, P, bottom, W, dr, dth, stream);
    }
    for (int end = t->h - i0; i0 < end; i0 += P) {      /* rows no mirror pair covers */
        int rows = end - i0 < P ? end - i0 : P;
        for (int c = 0; c < 4; c++)
            rbe_panel_class_avx2(family, want_grad, s, &sv, t, c, i0, rows, top);
        rbe_panel_ungroup_avx2(want_grad, t, i0, rows, top, W, dr, dth, stream);
    }
    if (stream) _mm_sfence();   /* order the non-temporal stores before the caller's */
}

RBE_TARGET_AVX2 void rbe_block_poly_avx2(const rbe_seed32 *s, const rbe_tables *t, float *W,
                                         float *dr, float *dth, float *scratch, int stream)
{
    if (dr) rbe_block_avx2_body(RBE_APPROX_POLY, 1, s, t, W, dr, dth, scratch, stream);
    else rbe_block_avx2_body(RBE_APPROX_POLY, 0, s, t, W, NULL, NULL, scratch, stream);
}

RBE_TARGET_AVX2_VL void rbe_block_poly_avx2_vl(const rbe_seed32 *s, const rbe_tables *t, float *W,
                                               float *dr, float *dth, float *scratch, int stream)
{
    if (dr) rbe_block_avx2_body(RBE_APPROX_POLY, 1, s, t, W, dr, dth, scratch, stream);
    else rbe_block_avx2_body(RBE_APPROX_POLY, 0, s, t, W, NULL, NULL, scratch, stream);
}

RBE_TARGET_AVX2 void rbe_block_lut_avx2(const rbe_seed32 *s, const rbe_tables *t, float *W,
                                        float *dr, float *dth, float *scratch, int stream)
{
    if (dr) rbe_block_avx2_body(RBE_APPROX_LUT, 1, s, t, W, dr, dth, scratch, stream);
    else rbe_block_avx2_body(RBE_APPROX_LUT, 0, s, t, W, NULL, NULL, scratch, stream);
}

RBE_TARGET_AVX2_VL void rbe_block_lut_avx2_vl(const rbe_seed32 *s, const rbe_tables *t, float *W,
                                              float *dr, float *dth, float *scratch, int stream)
{
    if (dr) rbe_block_avx2_body(RBE_APPROX_LUT, 1, s, t, W, dr, dth, scratch, stream);
    else rbe_block_avx2_body(RBE_APPROX_LUT, 0, s, t, W, NULL, NULL, scratch, stream);
}

RBE_TARGET_AVX2 void rbe_block_cordic_avx2(const rbe_seed32 *s, const rbe_tables *t, float *W,
                                           float *dr, float *dth, float *scratch, int stream)
{
    if (dr) rbe_block_avx2_body(RBE_APPROX_CORDIC, 1, s, t, W, dr, dth, scratch, stream);
    else rbe_block_avx2_body(RBE_APPROX_CORDIC, 0, s, t, W, NULL, NULL, scratch, stream);
}

RBE_TARGET_AVX2_VL void rbe_block_cordic_avx2_vl(const rbe_seed32 *s, const rbe_tables *t, float *W,
                                                 float *dr, float *dth, float *scratch, int stream)
{
    if (dr) rbe_block_avx2_body(RBE_APPROX_CORDIC, 1, s, t, W, dr, dth, scratch, stream);
    else rbe_block_avx2_body(RBE_APPROX_CORDIC, 0, s, t, W, NULL, NULL, scratch, stream);
}

#endif
