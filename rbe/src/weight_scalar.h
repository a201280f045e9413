/* The fast weight function, scalar: private to the scalar kernel translation units, which
 * inline it into every weight. */
#ifndef RBE_SRC_WEIGHT_SCALAR_H
#define RBE_SRC_WEIGHT_SCALAR_H

#include <math.h>

#include "rbe/weight.h"
#include "approx_scalar.h"
#include "kernel_common.h"

static inline float rbe_signf(float v) { return v >= 0.0f ? 1.0f : -1.0f; }

/* f_state and its partials at one position; rr = r rho, u = rr + theta. */
RBE_INLINE float rbe_state_fast(int family, int state, int want_grad, const rbe_seed32 *s,
                                float rho, float sp, float cp, float rr, float u,
                                float *dfdr, float *dfdth)
{
    float f, dfdu;
    switch (state) {
    case 0: {
        float sa = sp * s->cos_theta + cp * s->sin_theta;
        if (want_grad) { *dfdr = 0.0f; *dfdth = rbe_signf(sa) * (cp * s->cos_theta - sp * s->sin_theta); }
        return fabsf(sa);
    }
    case 1: {
        float ca = cp * s->cos_theta - sp * s->sin_theta;
        if (want_grad) { *dfdr = 0.0f; *dfdth = -rbe_signf(ca) * (sp * s->cos_theta + cp * s->sin_theta); }
        return fabsf(ca);
    }
    case 2: f = rbe_tanh_approx(family, u); dfdu = 1.0f - f * f; break;
    case 3: {
        float t = rbe_tanh_approx(family, u);
        f = 1.0f - t * t; dfdu = -2.0f * t * f; break;
    }
    case 4: {
        float e = rbe_exp_approx(family, rr);
        if (want_grad) { *dfdr = -0.5f * e * rho; *dfdth = 0.0f; }
        return 1.0f - 0.5f * e;
    }
    case 5: {
        float inv = 1.0f / (1.0f + fabsf(u));
        f = rbe_log1p_approx(family, fabsf(u)); dfdu = rbe_signf(u) * inv; break;
    }
    case 6: f = 1.0f / (1.0f + fabsf(u)); dfdu = -rbe_signf(u) * f * f; break;
    default: f = u - u * u * u * (1.0f / 3.0f); dfdu = 1.0f - u * u; break;
    }
    if (want_grad) { *dfdr = dfdu * rho; *dfdth = dfdu; }
    return f;
}

/* Which sides of clamp(b delta f, 0, 1) f_state can reach (b delta in [0, 1.05]): f >= 0 in
 * states 0, 1, 3 and 6, and f <= 2/3 in states 4 and 7. The kernels skip the other sides,
 * which changes no value. */
static inline int rbe_state_clamps_below(int state)
{
    return state == 2 || state == 4 || state == 5 || state == 7;
}

static inline int rbe_state_clamps_above(int state) { return state != 4 && state != 7; }

RBE_INLINE float rbe_weight_fast(int family, int state, int want_grad, const rbe_seed32 *s,
                                 float rho, float sp, float cp, float *dr, float *dth)
{
    float rr = s->r * rho, u = rr + s->theta;
    float bd_raw = s->rpt_delta - s->r_delta * rho, bd = rbe_clampf(bd_raw, 0.0f, s->delta);
    float dfdr = 0.0f, dfdth = 0.0f;
    float f = rbe_state_fast(family, state, want_grad, s, rho, sp, cp, rr, u, &dfdr, &dfdth);
    float m = bd * f, w = m;
    if (rbe_state_clamps_below(state)) w = w > 0.0f ? w : 0.0f;
    if (rbe_state_clamps_above(state)) w = w < 1.0f ? w : 1.0f;
    if (want_grad) {
        int inside = m > 0.0f && m < 1.0f;
        float gbf = (bd_raw > 0.0f && bd_raw < s->delta) ? s->delta * f : 0.0f;
        *dr = inside ? gbf * (1.0f - rho) + bd * dfdr : 0.0f;
        *dth = inside ? gbf + bd * dfdth : 0.0f;
    }
    return w;
}

#endif
