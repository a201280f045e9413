/* AVX2 + FMA versions of the approximations in approx.h (8 float32 lanes).
 * Same algorithms, constants and tables as the scalar versions.
 */
#ifndef RBE_APPROX_AVX2_H
#define RBE_APPROX_AVX2_H

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

/* Range reduction shared by the exp versions: x = k ln2 + f. */
static inline RBE_TARGET_AVX2 __m256 rbe_exp_reduce8(__m256 x, __m256 k)
{
    __m256 f = _mm256_fnmadd_ps(k, RBE_V8(RBE_LN2_HI), x);
    return _mm256_fnmadd_ps(k, RBE_V8(RBE_LN2_LO), f);
}

static inline RBE_TARGET_AVX2 __m256 rbe_exp_clamp8(__m256 x)
{
    return _mm256_min_ps(_mm256_max_ps(x, RBE_V8(RBE_EXP_MIN)), RBE_V8(RBE_EXP_MAX));
}

static inline RBE_TARGET_AVX2 __m256 rbe_exp8_poly(__m256 x)
{
    x = rbe_exp_clamp8(x);
    __m256 k = _mm256_floor_ps(_mm256_fmadd_ps(x, RBE_V8(RBE_LOG2E), RBE_V8(0.5f)));
    __m256 f = rbe_exp_reduce8(x, k);
    __m256 p = RBE_V8(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, f, RBE_V8(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, f, RBE_V8(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, f, RBE_V8(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, f, RBE_V8(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, f, RBE_V8(5.0000001201e-1f));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, f), f, _mm256_add_ps(f, RBE_V8(1.0f)));
    return _mm256_mul_ps(p, rbe_pow2i8(_mm256_cvttps_epi32(k)));
}

static inline RBE_TARGET_AVX2 __m256 rbe_log8_poly(__m256 x)
{
    __m256 e;
    __m256 m = rbe_split_exponent8(x, &e);
    __m256 big = _mm256_cmp_ps(m, RBE_V8(1.41421356f), _CMP_GT_OQ);
    m = _mm256_blendv_ps(m, _mm256_mul_ps(m, RBE_V8(0.5f)), big);
    e = _mm256_add_ps(e, _mm256_and_ps(big, RBE_V8(1.0f)));
    __m256 t = _mm256_sub_ps(m, RBE_V8(1.0f)), z = _mm256_mul_ps(t, t);
    __m256 p = RBE_V8(7.0376836292e-2f);
    p = _mm256_fmadd_ps(p, t, RBE_V8(-1.1514610310e-1f));
    p = _mm256_fmadd_ps(p, t, RBE_V8(1.1676998740e-1f));
    p = _mm256_fmadd_ps(p, t, RBE_V8(-1.2420140846e-1f));
    p = _mm256_fmadd_ps(p, t, RBE_V8(1.4249322787e-1f));
    p = _mm256_fmadd_ps(p, t, RBE_V8(-1.6668057665e-1f));
    p = _mm256_fmadd_ps(p, t, RBE_V8(2.0000714765e-1f));
    p = _mm256_fmadd_ps(p, t, RBE_V8(-2.4999993993e-1f));
    p = _mm256_fmadd_ps(p, t, RBE_V8(3.3333331174e-1f));
    __m256 y = _mm256_fmadd_ps(e, RBE_V8(RBE_LN2_LO), _mm256_mul_ps(_mm256_mul_ps(p, t), z));
    y = _mm256_fnmadd_ps(RBE_V8(0.5f), z, y);
    return _mm256_fmadd_ps(e, RBE_V8(RBE_LN2_HI), _mm256_add_ps(t, y));
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

static inline RBE_TARGET_AVX2 __m256 rbe_log8_approx(int family, __m256 x)
{
    return family == RBE_APPROX_POLY ? rbe_log8_poly(x)
         : family == RBE_APPROX_LUT ? rbe_log8_lut(x) : rbe_log8_cordic(x);
}

#endif
#endif
