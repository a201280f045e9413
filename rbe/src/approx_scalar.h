/* Scalar approximations of rbe/approx.h: private to the kernel translation units, which
 * inline them into every weight (a call per weight would cost more than the weight). The
 * families, coefficients, tables and measured errors are in rbe/approx.h.
 */
#ifndef RBE_SRC_APPROX_SCALAR_H
#define RBE_SRC_APPROX_SCALAR_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "rbe/approx.h"
#include "kernel_common.h"

/* ---- shared bit helpers ------------------------------------------------------------ */

static inline float rbe_bits_to_float(int32_t b) { float f; memcpy(&f, &b, 4); return f; }
static inline int32_t rbe_float_to_bits(float f) { int32_t b; memcpy(&b, &f, 4); return b; }

/* min(max(v, lo), hi) written with comparisons, which compilers turn into vector min/max
 * (fminf/fmaxf have NaN rules that block that); v is never NaN here. */
static inline float rbe_clampf(float v, float lo, float hi)
{
    v = v > lo ? v : lo;
    return v < hi ? v : hi;
}

/* 2**k for integer k in the normal range. */
static inline float rbe_pow2i(int k) { return rbe_bits_to_float((k + 127) << 23); }

/* x = m * 2**e with m in [1, 2), for finite x > 0 (subnormals are not produced by callers). */
static inline float rbe_split_exponent(float x, int *e)
{
    int32_t b = rbe_float_to_bits(x);
    *e = ((b >> 23) & 0xFF) - 127;
    return rbe_bits_to_float((b & 0x007FFFFF) | 0x3F800000);
}

/* ---- polynomial ----------------------------------------------------------------------- */

static inline float rbe_exp_poly(float x)
{
    float p = RBE_EXP_C6 * x + RBE_EXP_C5;
    p = p * x + RBE_EXP_C4;
    p = p * x + RBE_EXP_C3;
    p = p * x + RBE_EXP_C2;
    p = p * x + RBE_EXP_C1;
    return p * x + RBE_EXP_C0;
}

static inline float rbe_tanh_poly(float u)
{
    float z = u * u;
    float num = (RBE_TANH_P2 * z + RBE_TANH_P1) * z + RBE_TANH_P0;
    float den = (RBE_TANH_Q2 * z + RBE_TANH_Q1) * z + 1.0f;
    return u * num / den;
}

static inline float rbe_log1p_poly(float a)
{
    float num = (RBE_LOG1P_P2 * a + RBE_LOG1P_P1) * a + RBE_LOG1P_P0;
    float den = ((RBE_LOG1P_Q3 * a + RBE_LOG1P_Q2) * a + RBE_LOG1P_Q1) * a + 1.0f;
    return a * num / den;
}

/* sin and cos for |t| <= 1 (theta's range) by Taylor polynomials. */
static inline void rbe_sincos_poly(float t, float *s, float *c)
{
    float z = t * t;
    *s = t * (1.0f + z * (-1.6666667e-1f + z * (8.3333333e-3f + z * (-1.9841270e-4f
             + z * 2.7557319e-6f))));
    *c = 1.0f + z * (-0.5f + z * (4.1666667e-2f + z * (-1.3888889e-3f + z * (2.4801587e-5f
             + z * -2.7557319e-7f))));
}

/* ---- LUT + linear interpolation ------------------------------------------------------ */

static inline float rbe_lut_interp(const float *table, float pos)
{
    pos = rbe_clampf(pos, 0.0f, (float)RBE_LUT_N);
    int i = (int)pos < RBE_LUT_N - 1 ? (int)pos : RBE_LUT_N - 1;
    float frac = pos - (float)i;
    return table[i] + frac * (table[i + 1] - table[i]);
}

static inline float rbe_exp_lut(float x)
{
    x = rbe_clampf(x, RBE_EXP_MIN, RBE_EXP_MAX);
    float k = floorf(x * RBE_LOG2E);
    float f = x - k * RBE_LN2_HI - k * RBE_LN2_LO;   /* in [0, ln2) up to rounding */
    return rbe_lut_interp(rbe_lut_exp, f * (RBE_LUT_N / 0.69314718f)) * rbe_pow2i((int)k);
}

static inline float rbe_log_lut(float x)
{
    int e;
    float m = rbe_split_exponent(x, &e);
    return rbe_lut_interp(rbe_lut_log, (m - 1.0f) * RBE_LUT_N) + (float)e * 0.69314718f;
}

static inline void rbe_sincos_lut(float t, float *s, float *c)
{
    float pos = (t + 1.0f) * (RBE_LUT_N / 2);
    *s = rbe_lut_interp(rbe_lut_sin, pos);
    *c = rbe_lut_interp(rbe_lut_cos, pos);
}

/* ---- CORDIC (fixed point Q3.28 in int32, shifts and adds only) ------------------------ */

static inline int32_t rbe_to_fixed(float v) { return (int32_t)lrintf(v * (float)RBE_CORDIC_ONE); }

/* exp(x) = 2**k * (cosh f + sinh f), |f| <= ln2/2, by hyperbolic rotation. */
static inline float rbe_exp_cordic(float x)
{
    x = rbe_clampf(x, RBE_EXP_MIN, RBE_EXP_MAX);
    float k = floorf(x * RBE_LOG2E + 0.5f);
    int32_t z = rbe_to_fixed(x - k * RBE_LN2_HI - k * RBE_LN2_LO);
    int32_t cx = rbe_cordic_inv_gain_h, cy = 0;
    for (int n = 0; n < RBE_CORDIC_STEPS; n++) {
        int32_t sh = rbe_cordic_shift[n], neg = z >> 31;   /* neg: -1 where z < 0 */
        int32_t dx = ((cy >> sh) ^ neg) - neg, dy = ((cx >> sh) ^ neg) - neg;
        cx += dx;
        cy += dy;
        z -= (rbe_cordic_atanh[n] ^ neg) - neg;
    }
    return (float)(cx + cy) * (1.0f / RBE_CORDIC_ONE) * rbe_pow2i((int)k);
}

/* log(x) = e ln2 + 2 atanh((m - 1)/(m + 1)), m in [1, 2), by hyperbolic vectoring. */
static inline float rbe_log_cordic(float x)
{
    int e;
    float m = rbe_split_exponent(x, &e);
    int32_t cx = rbe_to_fixed(m + 1.0f), cy = rbe_to_fixed(m - 1.0f), z = 0;
    for (int n = 0; n < RBE_CORDIC_STEPS; n++) {
        int32_t sh = rbe_cordic_shift[n], pos = ~(cy >> 31);  /* pos: -1 where y >= 0 */
        int32_t dx = ((cy >> sh) ^ pos) - pos, dy = ((cx >> sh) ^ pos) - pos;
        cx += dx;                                             /* rotate y towards 0 */
        cy += dy;
        z -= (rbe_cordic_atanh[n] ^ pos) - pos;
    }
    return (float)z * (2.0f / RBE_CORDIC_ONE) + (float)e * 0.69314718f;
}

/* sin and cos of t, |t| <= 1.74, by circular rotation. */
static inline void rbe_sincos_cordic(float t, float *s, float *c)
{
    int32_t z = rbe_to_fixed(t), cx = rbe_cordic_inv_gain_c, cy = 0;
    for (int n = 0; n < RBE_CORDIC_CIRC_STEPS; n++) {
        int32_t neg = z >> 31;
        int32_t dx = ((cy >> n) ^ neg) - neg, dy = ((cx >> n) ^ neg) - neg;
        cx -= dx;
        cy += dy;
        z -= (rbe_cordic_atan[n] ^ neg) - neg;
    }
    *s = (float)cy * (1.0f / RBE_CORDIC_ONE);
    *c = (float)cx * (1.0f / RBE_CORDIC_ONE);
}

/* ---- dispatch by family (constant-folded inside the kernels) ------------------------- */

static inline float rbe_exp_approx(int family, float x)
{
    return family == RBE_APPROX_POLY ? rbe_exp_poly(x)
         : family == RBE_APPROX_LUT ? rbe_exp_lut(x) : rbe_exp_cordic(x);
}

/* tanh u = 1 - 2 / (exp(2u) + 1) where the family has no direct approximation. */
static inline float rbe_tanh_approx(int family, float u)
{
    return family == RBE_APPROX_POLY ? rbe_tanh_poly(u)
         : 1.0f - 2.0f / (rbe_exp_approx(family, 2.0f * u) + 1.0f);
}

static inline float rbe_log1p_approx(int family, float a)
{
    return family == RBE_APPROX_POLY ? rbe_log1p_poly(a)
         : family == RBE_APPROX_LUT ? rbe_log_lut(1.0f + a) : rbe_log_cordic(1.0f + a);
}

static inline void rbe_sincos_approx(int family, float t, float *s, float *c)
{
    if (family == RBE_APPROX_POLY) rbe_sincos_poly(t, s, c);
    else if (family == RBE_APPROX_LUT) rbe_sincos_lut(t, s, c);
    else rbe_sincos_cordic(t, s, c);
}

#endif

