/* The weight function of DESIGN section 3, in precise (float64, libm) and fast (float32,
 * tables + approximations) modes, scalar versions.
 *
 *   b = clamp(r(1 - rho) + theta, 0, 1)   u = r rho + theta   a = phi + theta
 *   f_0 = |sin a|  f_1 = |cos a|  f_2 = tanh u  f_3 = sech^2 u  f_4 = 1 - exp(r rho)/2
 *   f_5 = ln(1 + |u|)  f_6 = 1/(1 + |u|)  f_7 = u - u^3/3
 *   W = clamp(b f_s delta, 0, 1),  s = sel[(31 i + j) mod 4]
 *
 * Gradients are the exact derivatives (clamp -> 0 outside its open interval, |v| -> sign v
 * with sign 0 = +1). Fast mode reads per-shape tables in a class-grouped layout: row i holds
 * four groups p = 0..3 of g lanes, lane q of group p being column j = 4q + p. Every column of
 * a group has the same class (p - i) mod 4, so a group is evaluated with one state and no
 * per-weight branch; sin(phi + theta) = sin phi cos theta + cos phi sin theta needs no
 * per-weight transcendental.
 */
#ifndef RBE_WEIGHT_H
#define RBE_WEIGHT_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "rbe/approx.h"
#include "rbe/fixed_point.h"

/* Per-shape tables, [h][4][g] float32 each; padding lanes hold zeros. */
typedef struct {
    int h, w, g;
    const float *rho, *sin_phi, *cos_phi;
} rbe_tables;

/* A seed decoded for the fast kernels (float32, sincos of theta by the chosen family).
 * The kernels compute b delta = clamp(delta (r + theta) - delta r rho, 0, delta), so they keep
 * r delta and (r + theta) delta. */
typedef struct {
    float r, theta, r_plus_theta, delta, sin_theta, cos_theta, r_delta, rpt_delta;
    int sel[RBE_N_CLASSES];
} rbe_seed32;

static inline void rbe_seed32_init(uint64_t hi, int family, rbe_seed32 *s)
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

/* Rows evaluated class by class before they are transposed to natural order. */
#define RBE_PANEL_ROWS 8

/* Floats of per-thread scratch a fast block kernel needs: two panels (a top one and its
 * mirror) of weights and both gradients. */
static inline ptrdiff_t rbe_scratch_floats(int g) { return (ptrdiff_t)6 * RBE_PANEL_ROWS * 4 * g; }

/* Number of columns j < w with j mod 4 == p. */
static inline int rbe_group_len(int w, int p) { return p < w ? (w - p + 3) / 4 : 0; }

/* ---- precise mode ---------------------------------------------------------------------- */

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

static void rbe_block_precise(uint64_t hi, int h, int w, double *W, double *dr, double *dth)
{
    for (int i = 0; i < h; i++)
        for (int j = 0; j < w; j++) {
            ptrdiff_t k = (ptrdiff_t)i * w + j;
            rbe_weight_precise(hi, i, j, h, w, W + k, dr ? dr + k : NULL, dth ? dth + k : NULL);
        }
}

/* ---- fast mode, scalar ------------------------------------------------------------------ */

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

/* All groups of one class in rows [i0, i0 + rows) with a fixed state, into grouped panel
 * buffers; the inner loop has no branch on the state, so compilers can vectorise it (SSE2,
 * NEON) where the family allows. */
RBE_INLINE void rbe_class_scalar(int family, int state, int want_grad, int c,
                                 const rbe_seed32 *s, const rbe_tables *t, int i0, int rows,
                                 float *pw, float *pr, float *pt)
{
    const int g = t->g;
    for (int k = 0; k < rows; k++) {
        int p = (c + i0 + k) & 3;
        ptrdiff_t src = ((ptrdiff_t)(i0 + k) * 4 + p) * g, dst = ((ptrdiff_t)k * 4 + p) * g;
        for (int q = 0; q < g; q++) {
            float gr = 0.0f, gt = 0.0f;
            pw[dst + q] = rbe_weight_fast(family, state, want_grad, s, t->rho[src + q],
                                          t->sin_phi[src + q], t->cos_phi[src + q], &gr, &gt);
            if (want_grad) { pr[dst + q] = gr; pt[dst + q] = gt; }
        }
    }
}

/* One panel row from the grouped layout [4][g] to natural columns [w]. */
static inline void rbe_ungroup_row_scalar(const float *grouped, int g, int w, float *row)
{
    for (int p = 0; p < 4; p++)
        for (int q = 0, n = rbe_group_len(w, p); q < n; q++) row[4 * q + p] = grouped[p * g + q];
}

/* One block in natural [h][w] layout, class by class over panels of rows (as the AVX2
 * kernel); dr and dth are written when want_grad. */
RBE_INLINE void rbe_block_scalar_body(int family, int want_grad, const rbe_seed32 *s,
                                      const rbe_tables *t, float *W, float *dr, float *dth,
                                      float *scratch, int stream)
{
    (void)stream;
    if (s->r_plus_theta <= 0.0f) {   /* b = 0 everywhere (r, rho >= 0): all outputs are 0 */
        size_t bytes = (size_t)t->h * (size_t)t->w * sizeof(float);
        memset(W, 0, bytes);
        if (want_grad) { memset(dr, 0, bytes); memset(dth, 0, bytes); }
        return;
    }
    const ptrdiff_t panel = (ptrdiff_t)RBE_PANEL_ROWS * 4 * t->g;
    float *pw = scratch, *pr = scratch + panel, *pt = scratch + 2 * panel;
    for (int i0 = 0; i0 < t->h; i0 += RBE_PANEL_ROWS) {
        int rows = t->h - i0 < RBE_PANEL_ROWS ? t->h - i0 : RBE_PANEL_ROWS;
        for (int c = 0; c < 4; c++) {
#define RBE_CLASS_CASE(S) \
    case S: rbe_class_scalar(family, S, want_grad, c, s, t, i0, rows, pw, pr, pt); break;
            switch (s->sel[c]) {
                RBE_CLASS_CASE(0) RBE_CLASS_CASE(1) RBE_CLASS_CASE(2) RBE_CLASS_CASE(3)
                RBE_CLASS_CASE(4) RBE_CLASS_CASE(5) RBE_CLASS_CASE(6) default:
                rbe_class_scalar(family, 7, want_grad, c, s, t, i0, rows, pw, pr, pt);
            }
#undef RBE_CLASS_CASE
        }
        for (int k = 0; k < rows; k++) {
            ptrdiff_t row = (ptrdiff_t)(i0 + k) * t->w, off = (ptrdiff_t)k * 4 * t->g;
            rbe_ungroup_row_scalar(pw + off, t->g, t->w, W + row);
            if (want_grad) {
                rbe_ungroup_row_scalar(pr + off, t->g, t->w, dr + row);
                rbe_ungroup_row_scalar(pt + off, t->g, t->w, dth + row);
            }
        }
    }
}

#endif
