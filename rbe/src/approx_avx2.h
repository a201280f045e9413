/* AVX2 + FMA versions of the approximations in approx_scalar.h (8 float32 lanes), private
 * to the AVX2 kernel translation units. Same algorithms, constants and tables as the scalar
 * versions.
 */
#ifndef RBE_SRC_APPROX_AVX2_H
#define RBE_SRC_APPROX_AVX2_H

#include "rbe/approx.h"
#include "rbe/cpu.h"

#ifdef RBE_HAVE_X86_SIMD

#define RBE_V8(c) _mm256_set1_ps(c)

static inline RBE_TARGET_AVX2 __m256 rbe_pow2i8(__m256i k)
{
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k, _mm256_set1_epi32(127)), 23));
}

/* x = m * 2**e, m in [1, 2); e returned as float lanes. */
static inline RBE_TARGET_AVX2 __m256 rbe_split_exponent8(__m256 x, __m256 *e)
{
    __m256i b = _mm256_castps_si256(x);
    __m256i ei = _mm256_sub_epi32(_mm256_srli_epi32(b, 23), _mm256_set1_epi32(127));
    *e = _mm256_cvtepi32_ps(ei);
    b = _mm256_or_si256(_mm256_and_si256(b, _mm256_set1_epi32(0x007FFFFF)),
                        _mm256_set1_epi32(0x3F800000));
    return _mm256_castsi256_ps(b);
}

/* Range reduction shared by the LUT and CORDIC exp: x = k ln2 + f. */
static inline RBE_TARGET_AVX2 __m256 rbe_exp_reduce8(__m256 x, __m256 k)
{
    __m256 f = _mm256_fnmadd_ps(k, RBE_V8(RBE_LN2_HI), x);
    return _mm256_fnmadd_ps(k, RBE_V8(RBE_LN2_LO), f);
}

static inline RBE_TARGET_AVX2 __m256 rbe_exp_clamp8(__m256 x)
{
    return _mm256_min_ps(_mm256_max_ps(x, RBE_V8(RBE_EXP_MIN)), RBE_V8(RBE_EXP_MAX));
}

/* 1/x from the 12-bit hardware estimate and one Newton step (relative error < 2e-7):
 * cheaper than a division, well inside the kernel's 1e-5 bound. */
static inline RBE_TARGET_AVX2 __m256 rbe_recip8(__m256 x)
{
    __m256 r = _mm256_rcp_ps(x);
    return _mm256_mul_ps(r, _mm256_fnmadd_ps(x, r, RBE_V8(2.0f)));
}

static inline RBE_TARGET_AVX2 __m256 rbe_exp8_poly(__m256 x)
{
    __m256 p = _mm256_fmadd_ps(RBE_V8(RBE_EXP_C6), x, RBE_V8(RBE_EXP_C5));
    p = _mm256_fmadd_ps(p, x, RBE_V8(RBE_EXP_C4));
    p = _mm256_fmadd_ps(p, x, RBE_V8(RBE_EXP_C3));
    p = _mm256_fmadd_ps(p, x, RBE_V8(RBE_EXP_C2));
    p = _mm256_fmadd_ps(p, x, RBE_V8(RBE_EXP_C1));
    return _mm256_fmadd_ps(p, x, RBE_V8(RBE_EXP_C0));
}

static inline RBE_TARGET_AVX2 __m256 rbe_tanh8_poly(__m256 u)
{
    __m256 z = _mm256_mul_ps(u, u);
    __m256 num = _mm256_fmadd_ps(RBE_V8(RBE_TANH_P2), z, RBE_V8(RBE_TANH_P1));
    num = _mm256_fmadd_ps(num, z, RBE_V8(RBE_TANH_P0));
    __m256 den = _mm256_fmadd_ps(RBE_V8(RBE_TANH_Q2), z, RBE_V8(RBE_TANH_Q1));
    den = _mm256_fmadd_ps(den, z, RBE_V8(1.0f));
    return _mm256_mul_ps(_mm256_mul_ps(u, num), rbe_recip8(den));
}

static inline RBE_TARGET_AVX2 __m256 rbe_log1p8_poly(__m256 a)
{
    __m256 num = _mm256_fmadd_ps(RBE_V8(RBE_LOG1P_P2), a, RBE_V8(RBE_LOG1P_P1));
    num = _mm256_fmadd_ps(num, a, RBE_V8(RBE_LOG1P_P0));
    __m256 den = _mm256_fmadd_ps(RBE_V8(RBE_LOG1P_Q3), a, RBE_V8(RBE_LOG1P_Q2));
    den = _mm256_fmadd_ps(den, a, RBE_V8(RBE_LOG1P_Q1));
    den = _mm256_fmadd_ps(den, a, RBE_V8(1.0f));
    return _mm256_mul_ps(_mm256_mul_ps(a, num), rbe_recip8(den));
}

static inline RBE_TARGET_AVX2 __m256 rbe_lut_interp8(const float *table, __m256 pos)
{
    pos = _mm256_min_ps(_mm256_max_ps(pos, RBE_V8(0.0f)), RBE_V8((float)RBE_LUT_N));
    __m256i i = _mm256_min_epi32(_mm256_cvttps_epi32(pos), _mm256_set1_epi32(RBE_LUT_N - 1));
    __m256 frac = _mm256_sub_ps(pos, _mm256_cvtepi32_ps(i));
    __m256 y0 = _mm256_i32gather_ps(table, i, 4);
    __m256 y1 = _mm256_i32gather_ps(table + 1, i, 4);
    return _mm256_fmadd_ps(frac, _mm256_sub_ps(y1, y0), y0);
}

static inline RBE_TARGET_AVX2 __m256 rbe_exp8_lut(__m256 x)
{
    x = rbe_exp_clamp8(x);
    __m256 k = _mm256_floor_ps(_mm256_mul_ps(x, RBE_V8(RBE_LOG2E)));
    __m256 f = rbe_exp_reduce8(x, k);
    __m256 v = rbe_lut_interp8(rbe_lut_exp, _mm256_mul_ps(f, RBE_V8(RBE_LUT_N / 0.69314718f)));
    return _mm256_mul_ps(v, rbe_pow2i8(_mm256_cvttps_epi32(k)));
}

static inline RBE_TARGET_AVX2 __m256 rbe_log8_lut(__m256 x)
{
    __m256 e;
    __m256 m = rbe_split_exponent8(x, &e);
    __m256 pos = _mm256_mul_ps(_mm256_sub_ps(m, RBE_V8(1.0f)), RBE_V8((float)RBE_LUT_N));
    return _mm256_fmadd_ps(e, RBE_V8(0.69314718f), rbe_lut_interp8(rbe_lut_log, pos));
}

/* One CORDIC micro-rotation: a += d * (b >> sh), with d = -1 where neg lanes are all ones. */
static inline RBE_TARGET_AVX2 __m256i rbe_cordic_term8(__m256i v, __m128i sh, __m256i neg)
{
    return _mm256_sub_epi32(_mm256_xor_si256(_mm256_sra_epi32(v, sh), neg), neg);
}

static inline RBE_TARGET_AVX2 __m256i rbe_to_fixed8(__m256 v)
{
    return _mm256_cvtps_epi32(_mm256_mul_ps(v, RBE_V8((float)RBE_CORDIC_ONE)));
}

static inline RBE_TARGET_AVX2 __m256 rbe_exp8_cordic(__m256 x)
{
    x = rbe_exp_clamp8(x);
    __m256 k = _mm256_floor_ps(_mm256_fmadd_ps(x, RBE_V8(RBE_LOG2E), RBE_V8(0.5f)));
    __m256i z = rbe_to_fixed8(rbe_exp_reduce8(x, k));
    __m256i cx = _mm256_set1_epi32(rbe_cordic_inv_gain_h), cy = _mm256_setzero_si256();
    for (int n = 0; n < RBE_CORDIC_STEPS; n++) {
        __m128i sh = _mm_cvtsi32_si128(rbe_cordic_shift[n]);
        __m256i neg = _mm256_srai_epi32(z, 31);
        __m256i dx = rbe_cordic_term8(cy, sh, neg), dy = rbe_cordic_term8(cx, sh, neg);
        cx = _mm256_add_epi32(cx, dx);
        cy = _mm256_add_epi32(cy, dy);
        __m256i a = _mm256_set1_epi32(rbe_cordic_atanh[n]);
        z = _mm256_sub_epi32(z, _mm256_sub_epi32(_mm256_xor_si256(a, neg), neg));
    }
    __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(cx, cy)),
                             RBE_V8(1.0f / RBE_CORDIC_ONE));
    return _mm256_mul_ps(v, rbe_pow2i8(_mm256_cvttps_epi32(k)));
}

static inline RBE_TARGET_AVX2 __m256 rbe_log8_cordic(__m256 x)
{
    __m256 e;
    __m256 m = rbe_split_exponent8(x, &e);
    __m256i cx = rbe_to_fixed8(_mm256_add_ps(m, RBE_V8(1.0f)));
    __m256i cy = rbe_to_fixed8(_mm256_sub_ps(m, RBE_V8(1.0f)));
    __m256i z = _mm256_setzero_si256(), ones = _mm256_set1_epi32(-1);
    for (int n = 0; n < RBE_CORDIC_STEPS; n++) {
        __m128i sh = _mm_cvtsi32_si128(rbe_cordic_shift[n]);
        __m256i pos = _mm256_xor_si256(_mm256_srai_epi32(cy, 31), ones);
        __m256i dx = rbe_cordic_term8(cy, sh, pos), dy = rbe_cordic_term8(cx, sh, pos);
        cx = _mm256_add_epi32(cx, dx);
        cy = _mm256_add_epi32(cy, dy);
        __m256i a = _mm256_set1_epi32(rbe_cordic_atanh[n]);
        z = _mm256_sub_epi32(z, _mm256_sub_epi32(_mm256_xor_si256(a, pos), pos));
    }
    __m256 zf = _mm256_mul_ps(_mm256_cvtepi32_ps(z), RBE_V8(2.0f / RBE_CORDIC_ONE));
    return _mm256_fmadd_ps(e, RBE_V8(0.69314718f), zf);
}

static inline RBE_TARGET_AVX2 __m256 rbe_exp8_approx(int family, __m256 x)
{
    return family == RBE_APPROX_POLY ? rbe_exp8_poly(x)
         : family == RBE_APPROX_LUT ? rbe_exp8_lut(x) : rbe_exp8_cordic(x);
}

static inline RBE_TARGET_AVX2 __m256 rbe_tanh8_approx(int family, __m256 u)
{
    if (family == RBE_APPROX_POLY) return rbe_tanh8_poly(u);
    __m256 e = rbe_exp8_approx(family, _mm256_add_ps(u, u));
    return _mm256_fnmadd_ps(RBE_V8(2.0f), rbe_recip8(_mm256_add_ps(e, RBE_V8(1.0f))), RBE_V8(1.0f));
}

static inline RBE_TARGET_AVX2 __m256 rbe_log1p8_approx(int family, __m256 a)
{
    __m256 one_plus_a = _mm256_add_ps(a, RBE_V8(1.0f));
    return family == RBE_APPROX_POLY ? rbe_log1p8_poly(a)
         : family == RBE_APPROX_LUT ? rbe_log8_lut(one_plus_a) : rbe_log8_cordic(one_plus_a);
}

#endif
#endif
