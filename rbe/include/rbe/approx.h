/* Function approximations for the fast (float32) weight kernel, scalar versions.
 *
 * The weight function needs transcendentals only on domains bounded by the seed format
 * (r in [0, 1), theta in [-1, 1), rho <= sqrt 2, so u = r rho + theta in [-1, 1 + sqrt 2)):
 *   exp(x)    for x = r rho in [0, sqrt 2]             (f_4)
 *   tanh(u)                                            (f_2, f_3)
 *   log1p(a)  for a = |u| in [0, 1 + sqrt 2)           (f_5)
 *   sincos(t) for t = theta in [-1, 1]                 (per seed, not per weight)
 * Three families provide them:
 *   RBE_APPROX_POLY    minimax polynomials and rational functions fitted on those domains,
 *                      evaluated directly (no range reduction)
 *   RBE_APPROX_LUT     range reduction + table lookup with linear interpolation
 *   RBE_APPROX_CORDIC  range reduction + fixed-point shift-and-add CORDIC
 *                      (hyperbolic rotation for exp, hyperbolic vectoring for log,
 *                       circular rotation for sincos), Q3.28 in int32
 * LUT and CORDIC build tanh from exp and log1p from log. Tables are filled once by
 * rbe_approx_init(), before any kernel runs.
 */
#ifndef RBE_APPROX_H
#define RBE_APPROX_H

#include <math.h>
#include <stdint.h>
#include <string.h>

enum { RBE_APPROX_POLY = 0, RBE_APPROX_LUT = 1, RBE_APPROX_CORDIC = 2, RBE_N_APPROX = 3 };

#define RBE_LN2_HI 0.693359375f
#define RBE_LN2_LO (-2.12194440e-4f)
#define RBE_LOG2E 1.44269504088896341f
#define RBE_EXP_MIN (-87.0f)
#define RBE_EXP_MAX 88.0f

#if defined(_MSC_VER) && !defined(__clang__)
#define RBE_INLINE static __forceinline
#else
#define RBE_INLINE static inline __attribute__((always_inline))
#endif

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

/* Coefficients (shared with approx_avx2.h), fitted by linear programming on Chebyshev points
 * of each domain; the errors quoted are measured in float32 over the whole domain. */

/* exp x on [0, sqrt 2]: degree-6 polynomial, relative error 4.3e-7. */
#define RBE_EXP_C6 2.759849088e-03f
#define RBE_EXP_C5 5.536580210e-03f
#define RBE_EXP_C4 4.429646371e-02f
#define RBE_EXP_C3 1.654495313e-01f
#define RBE_EXP_C2 5.002587857e-01f
#define RBE_EXP_C1 9.999801053e-01f
#define RBE_EXP_C0 1.000000228e+00f

/* tanh u = u P(u^2) / Q(u^2) on |u| <= 1 + sqrt 2: absolute error 4.4e-7. */
#define RBE_TANH_P2 9.193461756e-04f
#define RBE_TANH_P1 1.087098275e-01f
#define RBE_TANH_P0 9.999985107e-01f
#define RBE_TANH_Q2 1.494607284e-02f
#define RBE_TANH_Q1 4.420340037e-01f

/* log(1 + a) = a P(a) / Q(a) on [0, 1 + sqrt 2]: absolute error 4.2e-7. */
#define RBE_LOG1P_P2 7.710698670e-02f
#define RBE_LOG1P_P1 7.292082298e-01f
#define RBE_LOG1P_P0 9.999881682e-01f
#define RBE_LOG1P_Q3 1.781999858e-02f
#define RBE_LOG1P_Q2 3.590750783e-01f
#define RBE_LOG1P_Q1 1.229049350e+00f

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

/* sin and cos for |t| <= 1 (theta's range) by Taylor polynomials: error < 3e-8. */
static inline void rbe_sincos_poly(float t, float *s, float *c)
{
    float z = t * t;
    *s = t * (1.0f + z * (-1.6666667e-1f + z * (8.3333333e-3f + z * (-1.9841270e-4f
             + z * 2.7557319e-6f))));
    *c = 1.0f + z * (-0.5f + z * (4.1666667e-2f + z * (-1.3888889e-3f + z * (2.4801587e-5f
             + z * -2.7557319e-7f))));
}

/* ---- LUT + linear interpolation ------------------------------------------------------ */

#define RBE_LUT_BITS 11
#define RBE_LUT_N (1 << RBE_LUT_BITS)
/* exp on [0, ln2], log(1 + t) on t in [0, 1], sin and cos on [-1, 1]; one guard entry each. */
static float rbe_lut_exp[RBE_LUT_N + 1], rbe_lut_log[RBE_LUT_N + 1];
static float rbe_lut_sin[RBE_LUT_N + 1], rbe_lut_cos[RBE_LUT_N + 1];

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

#define RBE_CORDIC_FRAC 28
#define RBE_CORDIC_ONE (1 << RBE_CORDIC_FRAC)
#define RBE_CORDIC_STEPS 26   /* hyperbolic: shifts 1..24 with 4 and 13 repeated */
static int32_t rbe_cordic_shift[RBE_CORDIC_STEPS];
static int32_t rbe_cordic_atanh[RBE_CORDIC_STEPS];
static int32_t rbe_cordic_inv_gain_h;                   /* 1 / prod sqrt(1 - 4^-i) */
#define RBE_CORDIC_CIRC_STEPS 28
static int32_t rbe_cordic_atan[RBE_CORDIC_CIRC_STEPS];
static int32_t rbe_cordic_inv_gain_c;                   /* prod 1 / sqrt(1 + 4^-i) */

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

/* Fill the tables (libm here, never per weight). Idempotent; call before any kernel. */
static void rbe_approx_init(void)
{
    for (int i = 0; i <= RBE_LUT_N; i++) {
        double u = (double)i / RBE_LUT_N;
        rbe_lut_exp[i] = (float)exp(u * 0.6931471805599453);
        rbe_lut_log[i] = (float)log1p(u);
        rbe_lut_sin[i] = (float)sin(2.0 * u - 1.0);
        rbe_lut_cos[i] = (float)cos(2.0 * u - 1.0);
    }
    double gain = 1.0;
    int n = 0;
    for (int sh = 1; n < RBE_CORDIC_STEPS; sh++) {
        int reps = (sh == 4 || sh == 13) ? 2 : 1;   /* repeats make hyperbolic CORDIC converge */
        for (int r = 0; r < reps && n < RBE_CORDIC_STEPS; r++, n++) {
            rbe_cordic_shift[n] = sh;
            rbe_cordic_atanh[n] = (int32_t)llround(atanh(ldexp(1.0, -sh)) * RBE_CORDIC_ONE);
            gain *= sqrt(1.0 - ldexp(1.0, -2 * sh));
        }
    }
    rbe_cordic_inv_gain_h = (int32_t)llround(RBE_CORDIC_ONE / gain);
    gain = 1.0;
    for (int i = 0; i < RBE_CORDIC_CIRC_STEPS; i++) {
        rbe_cordic_atan[i] = (int32_t)llround(atan(ldexp(1.0, -i)) * RBE_CORDIC_ONE);
        gain *= sqrt(1.0 + ldexp(1.0, -2 * i));
    }
    rbe_cordic_inv_gain_c = (int32_t)llround(RBE_CORDIC_ONE / gain);
}

#endif
