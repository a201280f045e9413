/* The fast weight function with AVX2 + FMA, 8 weights of one class group per step:
 * private to the AVX2 kernel translation units, which inline it into every weight. Same
 * arithmetic as rbe_weight_fast in weight_scalar.h, lane by lane.
 */
#ifndef RBE_SRC_WEIGHT_AVX2_H
#define RBE_SRC_WEIGHT_AVX2_H

#include "rbe/weight.h"
#include "approx_avx2.h"
#include "kernel_common.h"
#include "weight_scalar.h"

#ifdef RBE_HAVE_X86_SIMD

/* A seed broadcast to 8 lanes. */
typedef struct {
    __m256 r, theta, delta, sin_theta, cos_theta, r_delta, rpt_delta;
} rbe_seed_v8;

static inline RBE_TARGET_AVX2 void rbe_seed_v8_init(const rbe_seed32 *s, rbe_seed_v8 *v)
{
    v->r = RBE_V8(s->r);
    v->theta = RBE_V8(s->theta);
    v->delta = RBE_V8(s->delta);
    v->sin_theta = RBE_V8(s->sin_theta);
    v->cos_theta = RBE_V8(s->cos_theta);
    v->r_delta = RBE_V8(s->r_delta);
    v->rpt_delta = RBE_V8(s->rpt_delta);
}

/* b delta before its clamp, delta (r + theta) - delta r rho: W = 0 where it is <= 0. */
static inline RBE_TARGET_AVX2 __m256 rbe_bd_raw8(const rbe_seed_v8 *s, __m256 rho)
{
    return _mm256_fnmadd_ps(s->r_delta, rho, s->rpt_delta);
}

static inline RBE_TARGET_AVX2 __m256 rbe_abs8(__m256 v) { return _mm256_andnot_ps(RBE_V8(-0.0f), v); }

/* v * sign(s), with sign(+-0) following the sign bit. */
static inline RBE_TARGET_AVX2 __m256 rbe_mulsign8(__m256 v, __m256 s)
{
    return _mm256_xor_ps(v, _mm256_and_ps(s, RBE_V8(-0.0f)));
}

/* All bits set where lo < v < hi, else clear (a mask for _mm256_and_ps). */
static inline RBE_TARGET_AVX2 __m256 rbe_inside8(__m256 v, __m256 lo, __m256 hi)
{
    return _mm256_and_ps(_mm256_cmp_ps(v, lo, _CMP_GT_OQ), _mm256_cmp_ps(v, hi, _CMP_LT_OQ));
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
        f = rbe_tanh8_approx(family, u);
        dfdu = _mm256_fnmadd_ps(f, f, one);
        break;
    case 3: {
        __m256 t = rbe_tanh8_approx(family, u);
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
        __m256 a = rbe_abs8(u);
        f = rbe_log1p8_approx(family, a);
        dfdu = want_grad ? rbe_mulsign8(rbe_recip8(_mm256_add_ps(one, a)), u) : _mm256_setzero_ps();
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

/* As rbe_weight_fast, with both multiply-adds of the common terms fused. */
RBE_INLINE RBE_TARGET_AVX2 __m256 rbe_weight8(int family, int state, int want_grad,
                                              const rbe_seed_v8 *s, __m256 rho, __m256 sp,
                                              __m256 cp, __m256 *dr, __m256 *dth)
{
    __m256 zero = _mm256_setzero_ps(), one = RBE_V8(1.0f);
    __m256 rr = _mm256_mul_ps(s->r, rho), u = _mm256_fmadd_ps(s->r, rho, s->theta);
    __m256 bd_raw = rbe_bd_raw8(s, rho);
    __m256 bd = _mm256_min_ps(_mm256_max_ps(bd_raw, zero), s->delta);
    __m256 dfdr = zero, dfdth = zero;
    __m256 f = rbe_state8(family, state, want_grad, s, rho, sp, cp, rr, u, &dfdr, &dfdth);
    __m256 m = _mm256_mul_ps(bd, f), w = m;
    if (rbe_state_clamps_below(state)) w = _mm256_max_ps(w, zero);
    if (rbe_state_clamps_above(state)) w = _mm256_min_ps(w, one);
    if (want_grad) {
        __m256 inside = rbe_inside8(m, zero, one);
        __m256 gbf = _mm256_and_ps(rbe_inside8(bd_raw, zero, s->delta), _mm256_mul_ps(s->delta, f));
        __m256 one_minus_rho = _mm256_sub_ps(one, rho);
        *dr = _mm256_and_ps(inside, _mm256_fmadd_ps(gbf, one_minus_rho, _mm256_mul_ps(bd, dfdr)));
        *dth = _mm256_and_ps(inside, _mm256_fmadd_ps(bd, dfdth, gbf));
    }
    return w;
}

#endif
#endif
