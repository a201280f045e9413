/* The fast weight kernel with AVX2 + FMA: 8 weights of one class group per step.
 * Same arithmetic as rbe_weight_fast in weight.h, lane by lane.
 */
#ifndef RBE_WEIGHT_AVX2_H
#define RBE_WEIGHT_AVX2_H

#include "rbe/approx_avx2.h"
#include "rbe/weight.h"

#ifdef RBE_HAVE_X86_SIMD

/* A seed broadcast to 8 lanes. */
typedef struct {
    __m256 r, theta, r_plus_theta, delta, sin_theta, cos_theta;
} rbe_seed_v8;

static inline RBE_TARGET_AVX2 void rbe_seed_v8_init(const rbe_seed32 *s, rbe_seed_v8 *v)
{
    v->r = RBE_V8(s->r);
    v->theta = RBE_V8(s->theta);
    v->r_plus_theta = RBE_V8(s->r_plus_theta);
    v->delta = RBE_V8(s->delta);
    v->sin_theta = RBE_V8(s->sin_theta);
    v->cos_theta = RBE_V8(s->cos_theta);
}

static inline RBE_TARGET_AVX2 __m256 rbe_abs8(__m256 v) { return _mm256_andnot_ps(RBE_V8(-0.0f), v); }

/* v * sign(s), with sign(+-0) following the sign bit. */
static inline RBE_TARGET_AVX2 __m256 rbe_mulsign8(__m256 v, __m256 s)
{
    return _mm256_xor_ps(v, _mm256_and_ps(s, RBE_V8(-0.0f)));
}

static inline RBE_TARGET_AVX2 __m256 rbe_clamp01_8(__m256 v)
{
    return _mm256_min_ps(_mm256_max_ps(v, _mm256_setzero_ps()), RBE_V8(1.0f));
}

/* 1 where 0 < v < 1, else 0. */
static inline RBE_TARGET_AVX2 __m256 rbe_inside01_8(__m256 v)
{
    __m256 in = _mm256_and_ps(_mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_GT_OQ),
                              _mm256_cmp_ps(v, RBE_V8(1.0f), _CMP_LT_OQ));
    return _mm256_and_ps(in, RBE_V8(1.0f));
}

static inline RBE_TARGET_AVX2 __m256 rbe_tanh8(int family, __m256 u)
{
    __m256 e = rbe_exp8_approx(family, _mm256_add_ps(u, u));
    return _mm256_fnmadd_ps(RBE_V8(2.0f), rbe_recip8(_mm256_add_ps(e, RBE_V8(1.0f))), RBE_V8(1.0f));
}

RBE_INLINE RBE_TARGET_AVX2 __m256 rbe_state8(int family, int state, int want_grad,
                                             const rbe_seed_v8 *s, __m256 rho, __m256 sp,
                                             __m256 cp, __m256 rr, __m256 u,
                                             __m256 *dfdr, __m256 *dfdth)
{
    __m256 f, dfdu, one = RBE_V8(1.0f);
    switch (state) {
    case 0: {
        __m256 sa = _mm256_fmadd_ps(sp, s->cos_theta, _mm256_mul_ps(cp, s->sin_theta));
        if (want_grad) {
            __m256 ca = _mm256_fmsub_ps(cp, s->cos_theta, _mm256_mul_ps(sp, s->sin_theta));
            *dfdr = _mm256_setzero_ps();
            *dfdth = rbe_mulsign8(ca, sa);
        }
        return rbe_abs8(sa);
    }
    case 1: {
        __m256 ca = _mm256_fmsub_ps(cp, s->cos_theta, _mm256_mul_ps(sp, s->sin_theta));
        if (want_grad) {
            __m256 sa = _mm256_fmadd_ps(sp, s->cos_theta, _mm256_mul_ps(cp, s->sin_theta));
            *dfdr = _mm256_setzero_ps();
            *dfdth = rbe_mulsign8(_mm256_sub_ps(_mm256_setzero_ps(), sa), ca);
        }
        return rbe_abs8(ca);
    }
    case 2:
        f = rbe_tanh8(family, u);
        dfdu = _mm256_fnmadd_ps(f, f, one);
        break;
    case 3: {
        __m256 t = rbe_tanh8(family, u);
        f = _mm256_fnmadd_ps(t, t, one);
        dfdu = _mm256_mul_ps(RBE_V8(-2.0f), _mm256_mul_ps(t, f));
        break;
    }
    case 4: {
        __m256 e = rbe_exp8_approx(family, rr);
        if (want_grad) {
            *dfdr = _mm256_mul_ps(_mm256_mul_ps(RBE_V8(-0.5f), e), rho);
            *dfdth = _mm256_setzero_ps();
        }
        return _mm256_fnmadd_ps(RBE_V8(0.5f), e, one);
    }
    case 5: {
        __m256 a1 = _mm256_add_ps(one, rbe_abs8(u));
        f = rbe_log8_approx(family, a1);
        dfdu = want_grad ? rbe_mulsign8(rbe_recip8(a1), u) : _mm256_setzero_ps();
        break;
    }
    case 6:
        f = rbe_recip8(_mm256_add_ps(one, rbe_abs8(u)));
        dfdu = rbe_mulsign8(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(f, f)), u);
        break;
    default: {
        __m256 uu = _mm256_mul_ps(u, u);
        f = _mm256_fnmadd_ps(_mm256_mul_ps(uu, u), RBE_V8(1.0f / 3.0f), u);
        dfdu = _mm256_sub_ps(one, uu);
        break;
    }
    }
    if (want_grad) {
        *dfdr = _mm256_mul_ps(dfdu, rho);
        *dfdth = dfdu;
    }
    return f;
}

RBE_INLINE RBE_TARGET_AVX2 __m256 rbe_weight8(int family, int state, int want_grad,
                                              const rbe_seed_v8 *s, __m256 rho, __m256 sp,
                                              __m256 cp, __m256 *dr, __m256 *dth)
{
    __m256 rr = _mm256_mul_ps(s->r, rho), u = _mm256_add_ps(rr, s->theta);
    __m256 b_raw = _mm256_sub_ps(s->r_plus_theta, rr), b = rbe_clamp01_8(b_raw);
    __m256 dfdr = _mm256_setzero_ps(), dfdth = _mm256_setzero_ps();
    __m256 f = rbe_state8(family, state, want_grad, s, rho, sp, cp, rr, u, &dfdr, &dfdth);
    __m256 m = _mm256_mul_ps(_mm256_mul_ps(b, f), s->delta);
    if (want_grad) {
        __m256 gw = _mm256_mul_ps(rbe_inside01_8(m), s->delta);
        __m256 gbf = _mm256_mul_ps(rbe_inside01_8(b_raw), f);
        __m256 one_minus_rho = _mm256_sub_ps(RBE_V8(1.0f), rho);
        *dr = _mm256_mul_ps(gw, _mm256_fmadd_ps(gbf, one_minus_rho, _mm256_mul_ps(b, dfdr)));
        *dth = _mm256_mul_ps(gw, _mm256_fmadd_ps(b, dfdth, gbf));
    }
    return rbe_clamp01_8(m);
}

/* Store 4 class groups of 8 lanes (v[p][q] = column 4q + p) as 32 consecutive columns.
 * With stream set and dst 32-byte aligned, non-temporal stores keep outputs larger than the
 * caches from evicting the tables and reading every line before writing it. */
static inline RBE_TARGET_AVX2 void rbe_store_interleaved4(float *dst, const __m256 *v, int stream)
{
    __m256 t0 = _mm256_unpacklo_ps(v[0], v[1]), t1 = _mm256_unpackhi_ps(v[0], v[1]);
    __m256 t2 = _mm256_unpacklo_ps(v[2], v[3]), t3 = _mm256_unpackhi_ps(v[2], v[3]);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 out[4] = {_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u2, u3, 0x20),
                     _mm256_permute2f128_ps(u0, u1, 0x31), _mm256_permute2f128_ps(u2, u3, 0x31)};
    if (stream && ((uintptr_t)dst & 31) == 0)
        for (int k = 0; k < 4; k++) _mm256_stream_ps(dst + 8 * k, out[k]);
    else
        for (int k = 0; k < 4; k++) _mm256_storeu_ps(dst + 8 * k, out[k]);
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
        any_b = _mm256_max_ps(any_b, _mm256_sub_ps(sv->r_plus_theta, _mm256_mul_ps(sv->r, rho[v])));
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
RBE_INLINE RBE_TARGET_AVX2 void rbe_class_avx2(int family, int state, int want_grad, int c,
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

/* Class-major evaluation: one switch per class and panel, so every inner loop runs a single
 * state without branches; then the panel is transposed to natural column order. */
RBE_INLINE RBE_TARGET_AVX2 void rbe_block_avx2_body(int family, int want_grad,
                                                    const rbe_seed32 *s, const rbe_tables *t,
                                                    float *W, float *dr, float *dth,
                                                    float *scratch, int stream)
{
    rbe_seed_v8 sv;
    rbe_seed_v8_init(s, &sv);
    const ptrdiff_t panel = (ptrdiff_t)RBE_PANEL_ROWS * 4 * t->g;
    float *pw = scratch, *pr = scratch + panel, *pt = scratch + 2 * panel;
    for (int i0 = 0; i0 < t->h; i0 += RBE_PANEL_ROWS) {
        int rows = t->h - i0 < RBE_PANEL_ROWS ? t->h - i0 : RBE_PANEL_ROWS;
        for (int c = 0; c < 4; c++) {
#define RBE_CLASS_CASE(S) \
    case S: rbe_class_avx2(family, S, want_grad, c, &sv, t, i0, rows, pw, pr, pt); break;
            switch (s->sel[c]) {
                RBE_CLASS_CASE(0) RBE_CLASS_CASE(1) RBE_CLASS_CASE(2) RBE_CLASS_CASE(3)
                RBE_CLASS_CASE(4) RBE_CLASS_CASE(5) RBE_CLASS_CASE(6) default:
                rbe_class_avx2(family, 7, want_grad, c, &sv, t, i0, rows, pw, pr, pt);
            }
#undef RBE_CLASS_CASE
        }
        for (int k = 0; k < rows; k++) {
            ptrdiff_t row = (ptrdiff_t)(i0 + k) * t->w, off = (ptrdiff_t)k * 4 * t->g;
            rbe_ungroup_row(pw + off, t->g, t->w, W + row, stream);
            if (want_grad) {
                rbe_ungroup_row(pr + off, t->g, t->w, dr + row, stream);
                rbe_ungroup_row(pt + off, t->g, t->w, dth + row, stream);
            }
        }
    }
    if (stream) _mm_sfence();   /* order the non-temporal stores before the caller's */
}

#endif
#endif
