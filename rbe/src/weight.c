/* Seed decoding for the fast kernels and the precise (float64, libm) weight function of
 * rbe/weight.h. */
#include <math.h>

#include "rbe/weight.h"
#include "approx_scalar.h"

void rbe_seed32_init(uint64_t hi, int family, rbe_seed32 *s)
{
    s->r = (float)rbe_r_of(hi);
    s->theta = (float)rbe_theta_of(hi);
    s->r_plus_theta = s->r + s->theta;
    s->delta = (float)rbe_delta_of(hi);
    s->r_delta = s->r * s->delta;
    s->rpt_delta = s->r_plus_theta * s->delta;
    rbe_sincos_approx(family, s->theta, &s->sin_theta, &s->cos_theta);
    for (int c = 0; c < RBE_N_CLASSES; c++) s->sel[c] = rbe_selector(hi, c);
}

void rbe_generate_block(rbe_block_fn fn, int family, uint64_t hi, const rbe_tables *t,
                        float *W, float *dr, float *dth, float *scratch, int stream)
{
    rbe_seed32 s;
    rbe_seed32_init(hi, family, &s);
    fn(&s, t, W, dr, dth, scratch, stream);
}

static inline double rbe_sign(double v) { return v >= 0.0 ? 1.0 : -1.0; }

/* W(i, j) and, when dr != NULL, dW/dr and dW/dtheta, in float64 straight from the formula. */
static void rbe_weight_precise(uint64_t hi, int i, int j, int h, int w,
                               double *W, double *dr, double *dth)
{
    double x = w > 1 ? 2.0 * j / (w - 1) - 1.0 : 0.0;
    double y = h > 1 ? 2.0 * i / (h - 1) - 1.0 : 0.0;
    double rho = sqrt(x * x + y * y), phi = atan2(y, x);
    double r = rbe_r_of(hi), theta = rbe_theta_of(hi), delta = rbe_delta_of(hi);
    int state = rbe_selector(hi, (int)((31u * (unsigned)i + (unsigned)j) & 3u));
    double b_raw = r * (1.0 - rho) + theta, b = fmin(fmax(b_raw, 0.0), 1.0);
    double u = r * rho + theta, a = phi + theta;
    double f, dfdu = 0.0, dfdr = 0.0, dfdth = 0.0;
    int through_u = 1;
    switch (state) {
    case 0: f = fabs(sin(a)); dfdth = rbe_sign(sin(a)) * cos(a); through_u = 0; break;
    case 1: f = fabs(cos(a)); dfdth = -rbe_sign(cos(a)) * sin(a); through_u = 0; break;
    case 2: f = tanh(u); dfdu = 1.0 - f * f; break;
    case 3: { double t = tanh(u); f = 1.0 - t * t; dfdu = -2.0 * t * f; break; }
    case 4: f = 1.0 - 0.5 * exp(r * rho); dfdr = -0.5 * exp(r * rho) * rho; through_u = 0; break;
    case 5: f = log1p(fabs(u)); dfdu = rbe_sign(u) / (1.0 + fabs(u)); break;
    case 6: f = 1.0 / (1.0 + fabs(u)); dfdu = -rbe_sign(u) * f * f; break;
    default: f = u - u * u * u / 3.0; dfdu = 1.0 - u * u; break;
    }
    if (through_u) { dfdr = dfdu * rho; dfdth = dfdu; }
    double m = b * f * delta;
    *W = fmin(fmax(m, 0.0), 1.0);
    if (dr) {
        double gw = (m > 0.0 && m < 1.0) ? delta : 0.0;
        double gb = (b_raw > 0.0 && b_raw < 1.0) ? 1.0 : 0.0;
        *dr = gw * (gb * (1.0 - rho) * f + b * dfdr);
        *dth = gw * (gb * f + b * dfdth);
    }
}

void rbe_block_precise(uint64_t hi, int h, int w, double *W, double *dr, double *dth)
{
    for (int i = 0; i < h; i++)
        for (int j = 0; j < w; j++) {
            ptrdiff_t k = (ptrdiff_t)i * w + j;
            rbe_weight_precise(hi, i, j, h, w, W + k, dr ? dr + k : NULL, dth ? dth + k : NULL);
        }
}

