/* Tables of the LUT and CORDIC approximations (rbe/approx.h), and a scalar evaluator for
 * tests. */
#include <math.h>

#include "rbe/approx.h"
#include "approx_scalar.h"

float rbe_lut_exp[RBE_LUT_N + 1], rbe_lut_log[RBE_LUT_N + 1];
float rbe_lut_sin[RBE_LUT_N + 1], rbe_lut_cos[RBE_LUT_N + 1];
int32_t rbe_cordic_shift[RBE_CORDIC_STEPS];
int32_t rbe_cordic_atanh[RBE_CORDIC_STEPS];
int32_t rbe_cordic_inv_gain_h;
int32_t rbe_cordic_atan[RBE_CORDIC_CIRC_STEPS];
int32_t rbe_cordic_inv_gain_c;

void rbe_approx_init(void)
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

void rbe_approx_eval(int family, int function, const float *x, float *out, ptrdiff_t n)
{
    for (ptrdiff_t k = 0; k < n; k++) {
        float s, c;
        switch (function) {
        case RBE_FN_EXP: out[k] = rbe_exp_approx(family, x[k]); break;
        case RBE_FN_TANH: out[k] = rbe_tanh_approx(family, x[k]); break;
        case RBE_FN_LOG1P: out[k] = rbe_log1p_approx(family, x[k]); break;
        default:
            rbe_sincos_approx(family, x[k], &s, &c);
            out[k] = function == RBE_FN_SIN ? s : c;
        }
    }
}
