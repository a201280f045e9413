/* Function approximations for the fast (float32) weight kernels: families, coefficients and
 * tables. The approximations themselves are always-inline per-lane code in
 * rbe/src/approx_scalar.h and rbe/src/approx_avx2.h.
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
 * LUT and CORDIC build tanh from exp and log1p from log. The tables are filled once by
 * rbe_approx_init() (through rbe_kernel_init), before any kernel runs.
 *
 * Largest errors over those domains (rounded up), measured in float32 against float64 libm on
 * 200001 evenly spaced points (asserted by tests/test_kernel_matrix.py via rbe_approx_eval):
 *            exp (relative)   tanh (absolute)   log1p (absolute)   sin, cos (absolute)
 *   poly     4.4e-7           4.4e-7            4.2e-7             9e-8
 *   lut      1.3e-7           1.7e-7            1.4e-7             1.9e-7
 *   cordic   1.8e-7           1.8e-7            2.4e-7             8e-8
 * (poly sin and cos: 3e-8 of truncation, the rest float32 rounding.)
 */
#ifndef RBE_APPROX_H
#define RBE_APPROX_H

#include <stddef.h>
#include <stdint.h>

enum { RBE_APPROX_POLY = 0, RBE_APPROX_LUT = 1, RBE_APPROX_CORDIC = 2, RBE_N_APPROX = 3 };

#define RBE_LN2_HI 0.693359375f
#define RBE_LN2_LO (-2.12194440e-4f)
#define RBE_LOG2E 1.44269504088896341f
#define RBE_EXP_MIN (-87.0f)
#define RBE_EXP_MAX 88.0f

/* ---- polynomial coefficients ------------------------------------------------------------
 * Fitted by linear programming on Chebyshev points of each domain. */

/* exp x on [0, sqrt 2]: degree-6 polynomial. */
#define RBE_EXP_C6 2.759849088e-03f
#define RBE_EXP_C5 5.536580210e-03f
#define RBE_EXP_C4 4.429646371e-02f
#define RBE_EXP_C3 1.654495313e-01f
#define RBE_EXP_C2 5.002587857e-01f
#define RBE_EXP_C1 9.999801053e-01f
#define RBE_EXP_C0 1.000000228e+00f

/* tanh u = u P(u^2) / Q(u^2) on |u| <= 1 + sqrt 2. */
#define RBE_TANH_P2 9.193461756e-04f
#define RBE_TANH_P1 1.087098275e-01f
#define RBE_TANH_P0 9.999985107e-01f
#define RBE_TANH_Q2 1.494607284e-02f
#define RBE_TANH_Q1 4.420340037e-01f

/* log(1 + a) = a P(a) / Q(a) on [0, 1 + sqrt 2]. */
#define RBE_LOG1P_P2 7.710698670e-02f
#define RBE_LOG1P_P1 7.292082298e-01f
#define RBE_LOG1P_P0 9.999881682e-01f
#define RBE_LOG1P_Q3 1.781999858e-02f
#define RBE_LOG1P_Q2 3.590750783e-01f
#define RBE_LOG1P_Q1 1.229049350e+00f

/* ---- tables (defined in rbe/src/approx.c) ------------------------------------------------ */

#define RBE_LUT_BITS 11
#define RBE_LUT_N (1 << RBE_LUT_BITS)
/* exp on [0, ln2], log(1 + t) on t in [0, 1], sin and cos on [-1, 1]; one guard entry each. */
extern float rbe_lut_exp[RBE_LUT_N + 1], rbe_lut_log[RBE_LUT_N + 1];
extern float rbe_lut_sin[RBE_LUT_N + 1], rbe_lut_cos[RBE_LUT_N + 1];

#define RBE_CORDIC_FRAC 28
#define RBE_CORDIC_ONE (1 << RBE_CORDIC_FRAC)
#define RBE_CORDIC_STEPS 26   /* hyperbolic: shifts 1..24 with 4 and 13 repeated */
#define RBE_CORDIC_CIRC_STEPS 28
extern int32_t rbe_cordic_shift[RBE_CORDIC_STEPS];
extern int32_t rbe_cordic_atanh[RBE_CORDIC_STEPS];
extern int32_t rbe_cordic_inv_gain_h;                  /* 1 / prod sqrt(1 - 4^-i) */
extern int32_t rbe_cordic_atan[RBE_CORDIC_CIRC_STEPS];
extern int32_t rbe_cordic_inv_gain_c;                  /* prod 1 / sqrt(1 + 4^-i) */

/* Fill the tables (libm here, never per weight). Idempotent; call before any kernel. */
void rbe_approx_init(void);

/* The scalar approximations one by one, for tests: out[k] = function(x[k]) by `family`. */
enum { RBE_FN_EXP = 0, RBE_FN_TANH = 1, RBE_FN_LOG1P = 2, RBE_FN_SIN = 3, RBE_FN_COS = 4,
       RBE_N_FN = 5 };
void rbe_approx_eval(int family, int function, const float *x, float *out, ptrdiff_t n);

#endif
