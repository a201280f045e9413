/* The original RBE weight functions and training rules, as plain scalar float32 C (the API is
 * in rbe/reference.h).
 *
 * This is the serial baseline and the bit-level reference for
 * docs/design.md#the-original-algorithm: every operation is a float32 operation in the order
 * the original evaluates it, transcendentals are correctly rounded float32 values, and nothing
 * is vectorised or threaded. Defects of the original
 * (NaN for 1-wide blocks, overlapping bit fields, order-dependent updates) are kept on purpose.
 *
 * Callers must validate sizes: where the original panics on an out-of-range slice these
 * functions assume the caller has already rejected the input, and never check again.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "rbe/reference.h"

/* Bit-exactness needs every product and sum rounded separately: forbid fused multiply-add.
 * GCC does not contract in ISO C mode (-std=c99, as setup.py builds); MSVC contracts only
 * with /arch:AVX2 or higher, which setup.py does not pass. */
#if defined(__clang__)
#pragma float_control(push)
#pragma clang fp contract(off)
#endif

#define RBE_REF_PI 3.14159265358979323846f
#define RBE_REF_MASK20 UINT64_C(0xFFFFF)

/* Normalised position of element (i, j) of an R x C block (docs/design.md#coordinates). */
typedef struct {
    float x, y, rho, phi;
} rbe_ref_coord;

/* ---- float helpers with the original's (Rust's) semantics ----------------------------------- */

/* f32::clamp: NaN passes through. */
static inline float rbe_ref_clamp(float v, float lo, float hi)
{
    if (v < lo) v = lo;
    if (v > hi) v = hi;
    return v;
}

static inline float rbe_ref_bits_to_float(uint32_t b)
{
    union { uint32_t u; float f; } c;
    c.u = b;
    return c.f;
}

static inline uint32_t rbe_ref_float_to_bits(float f)
{
    union { uint32_t u; float f; } c;
    c.f = f;
    return c.u;
}

static inline float rbe_ref_r(rbe_ref_seed s)
{
    return rbe_ref_bits_to_float((uint32_t)(s.lo >> 32));
}

static inline float rbe_ref_theta(rbe_ref_seed s)
{
    return rbe_ref_bits_to_float((uint32_t)s.lo);
}

static inline uint64_t rbe_ref_lo(float r, float theta)
{
    return ((uint64_t)rbe_ref_float_to_bits(r) << 32) | rbe_ref_float_to_bits(theta);
}

/* Transcendentals evaluated in double and rounded once to float: correctly rounded in practice,
 * so results do not depend on the quality of the platform's float libm. The original's
 * published values (docs/design.md#published-values) need this:
 * glibc's float functions (sinf, ...) miss them by an ulp on some inputs. */
static inline float rbe_ref_sin(float x) { return (float)sin((double)x); }
static inline float rbe_ref_cos(float x) { return (float)cos((double)x); }
static inline float rbe_ref_tanh(float x) { return (float)tanh((double)x); }
static inline float rbe_ref_exp(float x) { return (float)exp((double)x); }
static inline float rbe_ref_cosh(float x) { return (float)cosh((double)x); }
static inline float rbe_ref_log(float x) { return (float)log((double)x); }
static inline float rbe_ref_atan2(float y, float x) { return (float)atan2((double)y, (double)x); }

/* f32::powi as LLVM lowers it (compiler-rt __powisf2: square-and-multiply in float). */
static inline float rbe_ref_powi(float a, int b)
{
    int recip = b < 0;
    float r = 1.0f;
    for (;;) {
        if (b & 1) r *= a;
        b /= 2;
        if (b == 0) break;
        a *= a;
    }
    return recip ? 1.0f / r : r;
}

/* ---- coordinates (docs/design.md#coordinates) ------------------------------------------------ */

/* 1-wide or 1-high blocks divide 0/0 and give NaN, as the original. */
static inline rbe_ref_coord rbe_ref_coord_of(size_t i, size_t j, size_t rows, size_t cols)
{
    rbe_ref_coord c;
    c.x = (((float)j / (float)(cols - 1)) * 2.0f) - 1.0f;
    c.y = (((float)i / (float)(rows - 1)) * 2.0f) - 1.0f;
    c.rho = sqrtf(c.x * c.x + c.y * c.y);
    c.phi = rbe_ref_atan2(c.y, c.x);
    return c;
}

/* ---- Packed64 CORDIC (docs/design.md#packed64-cordic) ---------------------------------------- */

static inline float rbe_ref_packed64(uint64_t w, size_t i, size_t j, size_t rows, size_t cols)
{
    float r = (float)(w >> 44) / 1048575.0f;
    float theta = (((float)((w >> 20) & UINT64_C(0xFFFFFF)) / 16777215.0f) * 2.0f) * RBE_REF_PI;
    rbe_ref_coord c = rbe_ref_coord_of(i, j, rows, cols);
    float x = r * rbe_ref_cos(c.phi + theta), y = r * rbe_ref_sin(c.phi + theta);
    int k;
    for (k = 0; k < 20; k++) {
        float sigma = ((w >> k) & 1) ? 1.0f : -1.0f;
        float p = ldexpf(1.0f, -k);
        float xn = x - (sigma * y) * p;
        float yn = y + (sigma * x) * p;
        x = xn;
        y = yn;
        if (k % 4 == 0) {
            float rho = sqrtf(x * x + y * y);
            if (rho > 1e-9f) {
                /* The original scales by tanh(rho), not tanh(rho)/rho. */
                float t = rbe_ref_tanh(rho);
                x *= t;
                y *= t;
            }
        }
    }
    return x / 1.64676f;
}

/* ---- 4-state fused_forward (docs/design.md#four-state-weight-function) ----------------------- */

static inline unsigned rbe_ref_class4(size_t i, size_t j) { return (unsigned)((31 * i + j) & 3); }
static inline unsigned rbe_ref_class8(size_t i, size_t j) { return (unsigned)((31 * i + j) & 7); }

static inline float rbe_ref_detail4(uint64_t state)
{
    float d = (float)((state >> 8) & 0xFFF);
    return 1.0f + 0.1f * ((d / 4095.0f) - 0.5f);
}

static inline float rbe_ref_fused_forward(rbe_ref_seed s, size_t i, size_t j, size_t rows,
                                          size_t cols)
{
    uint64_t state = s.hi & RBE_REF_MASK20;
    float r = rbe_ref_r(s), theta = rbe_ref_theta(s);
    rbe_ref_coord c = rbe_ref_coord_of(i, j, rows, cols);
    float b = rbe_ref_clamp((r - c.rho * r) + theta, 0.0f, 1.0f);
    unsigned sel = (unsigned)((state >> (2 * rbe_ref_class4(i, j))) & 3);
    float m;
    switch (sel) {
    case 0: m = b * fabsf(rbe_ref_sin(c.phi + theta)); break;
    case 1: m = b * fabsf(rbe_ref_cos(c.phi + theta)); break;
    case 2: m = b * rbe_ref_tanh(c.rho * r + theta); break;
    default: m = b * (1.0f - rbe_ref_exp(c.rho * r) * 0.5f); break;
    }
    return rbe_ref_clamp(m * rbe_ref_detail4(state), 0.0f, 1.0f);
}

/* ---- analytic gradients of fused_forward (docs/design.md#analytic-gradients) ----------------- */

/* which = 0 for dW/dr, 1 for dW/dtheta. */
static inline float rbe_ref_gradient(rbe_ref_seed s, size_t i, size_t j, size_t rows, size_t cols,
                                     int which)
{
    uint64_t state = s.hi & RBE_REF_MASK20;
    float r = rbe_ref_r(s), theta = rbe_ref_theta(s);
    rbe_ref_coord c = rbe_ref_coord_of(i, j, rows, cols);
    float u = (r - c.rho * r) + theta;
    float b = rbe_ref_clamp(u, 0.0f, 1.0f);
    float g = (u > 0.0f && u < 1.0f) ? 1.0f : 0.0f;
    float db_dr = (1.0f - c.rho) * g;
    float a = c.phi + theta;
    unsigned sel = (unsigned)((state >> (2 * rbe_ref_class4(i, j))) & 3);
    float delta = rbe_ref_detail4(state);
    float m, dm_dr, dm_dt;
    switch (sel) {
    case 0: {
        float sa = rbe_ref_sin(a), ca = rbe_ref_cos(a);
        m = b * fabsf(sa);
        dm_dr = db_dr * fabsf(sa);
        dm_dt = g * fabsf(sa) + b * (sa >= 0.0f ? ca : -ca);
        break;
    }
    case 1: {
        float sa = rbe_ref_sin(a), ca = rbe_ref_cos(a);
        m = b * fabsf(ca);
        dm_dr = db_dr * fabsf(ca);
        dm_dt = g * fabsf(ca) + b * (ca >= 0.0f ? -sa : sa);
        break;
    }
    case 2: {
        float t = rbe_ref_tanh(c.rho * r + theta);
        float sech2 = 1.0f - t * t;
        m = b * t;
        dm_dr = db_dr * t + b * sech2 * c.rho;
        dm_dt = g * t + b * sech2;
        break;
    }
    default: {
        float e = rbe_ref_exp(c.rho * r);
        float e3 = 1.0f - 0.5f * e;
        m = b * e3;
        dm_dr = db_dr * e3 + b * (-0.5f * e * c.rho);
        dm_dt = g * e3;
        break;
    }
    }
    {
        float v = m * delta;
        if (!(v > 0.0f && v < 1.0f)) return 0.0f;
    }
    return (which == 0 ? dm_dr : dm_dt) * delta;
}

/* ---- the 8-state variant (docs/design.md#eight-state-variant) -------------------------------- */

float rbe_ref_state_function(int state, float input, float phase)
{
    float si = rbe_ref_clamp(input, -10.0f, 10.0f);
    float sp = rbe_ref_clamp(phase, -10.0f, 10.0f);
    float v;
    switch (state) {
    case 0: v = rbe_ref_sin(si + sp); break;
    case 1: v = rbe_ref_cos(si + sp); break;
    case 2: v = rbe_ref_tanh(si * sp); break;
    case 3: {
        float ch = rbe_ref_cosh(si * sp);
        v = 1.0f / fmaxf(ch * ch, 1e-6f);
        break;
    }
    case 4: v = fminf(rbe_ref_exp((si * sp) * 0.1f), 10.0f); break;
    case 5: v = rbe_ref_clamp(rbe_ref_log(fabsf(si * sp) + 1e-6f), -10.0f, 10.0f); break;
    case 6: v = rbe_ref_clamp(1.0f / ((si * sp) + 1e-3f), -100.0f, 100.0f); break;
    case 7: v = rbe_ref_clamp((si * sp) + (0.1f * si) * si, -10.0f, 10.0f); break;
    default: v = si * sp; break;
    }
    return isfinite(v) ? rbe_ref_clamp(v, -1.0f, 1.0f) : 0.0f;
}

static inline float rbe_ref_fused_forward_advanced(rbe_ref_seed s, size_t i, size_t j, size_t rows,
                                                   size_t cols)
{
    uint64_t state = s.hi & RBE_REF_MASK20;
    float r = rbe_ref_r(s), theta = rbe_ref_theta(s);
    rbe_ref_coord c = rbe_ref_coord_of(i, j, rows, cols);
    float b = rbe_ref_clamp((r - c.rho * r) + theta, 0.0f, 1.0f);
    unsigned h = rbe_ref_class8(i, j);
    int primary = (int)((state >> (3 * h)) & 7);
    unsigned secondary = (unsigned)((state >> (2 * (h + 8))) & 3);
    float v = rbe_ref_state_function(primary, c.phi + theta * 0.5f, r);
    float mu, m, d4;
    switch (secondary) {
    case 0: mu = 1.0f; break;
    case 1: mu = 0.8f + 0.4f * rbe_ref_sin(c.rho * 3.14159f); break;
    case 2: mu = 1.0f - 0.3f * c.rho; break;
    default: mu = (1.0f + rbe_ref_cos(c.phi * 2.0f)) * 0.5f; break;
    }
    m = (b * fabsf(v)) * mu;
    d4 = (float)((state >> 16) & 0xF);
    return rbe_ref_clamp(m * (1.0f + 0.05f * ((d4 / 15.0f) - 0.5f)), 0.0f, 1.0f);
}

/* ---- state transitions (docs/design.md#original-state-transitions) --------------------------- */

/* Thresholds are strict, so NaN leaves the state unchanged. */
uint64_t rbe_ref_state_transition(uint64_t hi, float g, size_t i, size_t j)
{
    static const unsigned pos_map[4] = {1, 0, 3, 2}, neg_map[4] = {3, 2, 1, 0};
    unsigned shift = 2 * rbe_ref_class4(i, j);
    unsigned s = (unsigned)((hi >> shift) & 3);
    if (g > 0.1f) s = pos_map[s];
    else if (g < -0.1f) s = neg_map[s];
    return (hi & ~(UINT64_C(3) << shift)) | ((uint64_t)s << shift);
}

/* Works on the unmasked hi word: fields above bit 19 overwrite theta_q
 * (docs/design.md#overlapping-bit-fields). */
uint64_t rbe_ref_advanced_transition(uint64_t hi, float g, size_t i, size_t j)
{
    static const unsigned pos_map[8] = {1, 0, 3, 2, 5, 6, 7, 4};
    unsigned h = rbe_ref_class8(i, j);
    unsigned pp = 3 * h, sp = 2 * (h + 8);
    unsigned p = (unsigned)((hi >> pp) & 7), q = (unsigned)((hi >> sp) & 3);
    float a = fabsf(g);
    int positive = g > 0.0f; /* signum(g) > 0; a zero g changes nothing either way */
    if (a > 0.2f) {
        p = positive ? pos_map[p] : 7 - p;
    } else if (a > 0.05f) {
        switch (q) {
        case 0: p = (p + 1) & 7; break;
        case 1: p = (p + 7) & 7; break;
        case 2: p ^= 1; break;
        default: p ^= 2; break;
        }
    }
    if (a > 0.1f) q = positive ? (q + 1) & 3 : (q + 3) & 3;
    hi = (hi & ~(UINT64_C(7) << pp)) | ((uint64_t)p << pp);
    return (hi & ~(UINT64_C(3) << sp)) | ((uint64_t)q << sp);
}

/* ---- Adam (docs/design.md#training-rules) ---------------------------------------------------- */

void rbe_ref_adam(float *p, float *m, float *v, float g, float lr, int t)
{
    const float b1 = 0.9f, b2 = 0.999f, eps = 1e-8f;
    float m_hat, v_hat;
    *m = b1 * *m + (1.0f - b1) * g;
    *v = b2 * *v + (1.0f - b2) * g * g;
    m_hat = *m / (1.0f - rbe_ref_powi(b1, t));
    v_hat = *v / (1.0f - rbe_ref_powi(b2, t));
    *p = *p - lr * m_hat / (sqrtf(v_hat) + eps);
}

/* ---- single-seed backward passes (docs/design.md#training-rules) ----------------------------- */

/* Central difference of fused_forward in r (which = 0) or theta (1) around (r, theta), with the
 * seed's current hi. */
static inline float rbe_ref_central_diff(uint64_t hi, float r, float theta, float eps, size_t i,
                                         size_t j, size_t rows, size_t cols, int which)
{
    rbe_ref_seed plus, minus;
    plus.hi = minus.hi = hi;
    plus.lo = which == 0 ? rbe_ref_lo(r + eps, theta) : rbe_ref_lo(r, theta + eps);
    minus.lo = which == 0 ? rbe_ref_lo(r - eps, theta) : rbe_ref_lo(r, theta - eps);
    return (rbe_ref_fused_forward(plus, i, j, rows, cols)
            - rbe_ref_fused_forward(minus, i, j, rows, cols)) / (2.0f * eps);
}

/* Mode of the shared per-element loop: finite differences at the snapshot (r0, theta0), or the
 * analytic gradients of the current seed. */
enum { RBE_REF_FD = 0, RBE_REF_ANALYTIC = 1 };

/* Visits the R x C elements in row-major order: transition with the error, then accumulate
 * e * dW/dr and e * dW/dtheta. Returns the sum of squared errors. */
static inline float rbe_ref_accumulate(const float *target, const float *pred, rbe_ref_seed *seed,
                                       size_t rows, size_t cols, int mode, float *g_r, float *g_t)
{
    float r0 = rbe_ref_r(*seed), t0 = rbe_ref_theta(*seed), loss = 0.0f;
    size_t i, j;
    *g_r = 0.0f;
    *g_t = 0.0f;
    for (i = 0; i < rows; i++) {
        for (j = 0; j < cols; j++) {
            size_t k = i * cols + j;
            float e = pred[k] - target[k], dr, dt;
            loss += e * e;
            seed->hi = rbe_ref_state_transition(seed->hi, e, i, j);
            if (mode == RBE_REF_FD) {
                dr = rbe_ref_central_diff(seed->hi, r0, t0, 1e-4f, i, j, rows, cols, 0);
                dt = rbe_ref_central_diff(seed->hi, r0, t0, 1e-4f, i, j, rows, cols, 1);
            } else {
                dr = rbe_ref_gradient(*seed, i, j, rows, cols, 0);
                dt = rbe_ref_gradient(*seed, i, j, rows, cols, 1);
            }
            *g_r += e * dr;
            *g_t += e * dt;
        }
    }
    return loss;
}

/* fused_backward (mode FD) and fused_backward_fast (mode ANALYTIC): averaged SGD step, r clamped
 * to [0.1, 2]. Returns the MSE of the input prediction; sqrt of it is the RMSE. */
float rbe_ref_fused_backward(const float *target, const float *pred,
                             rbe_ref_seed *seed, size_t rows, size_t cols,
                             float lr, int mode)
{
    float n = (float)(rows * cols), g_r, g_t;
    float loss = rbe_ref_accumulate(target, pred, seed, rows, cols, mode, &g_r, &g_t);
    float r = rbe_ref_r(*seed), theta = rbe_ref_theta(*seed);
    g_r /= n;
    g_t /= n;
    seed->lo = rbe_ref_lo(rbe_ref_clamp(r - lr * g_r, 0.1f, 2.0f), theta - lr * g_t);
    return loss / n;
}

/* moments = {m_r, v_r, m_theta, v_theta}. Sums are not averaged; r clamped to [0, 1]. Returns
 * the RMSE of the input prediction. */
float rbe_ref_fused_backward_adam(const float *target, const float *pred,
                                  rbe_ref_seed *seed, float *moments, size_t rows,
                                  size_t cols, int epoch, float lr)
{
    float g_r, g_t;
    float loss = rbe_ref_accumulate(target, pred, seed, rows, cols, RBE_REF_FD, &g_r, &g_t);
    float r = rbe_ref_r(*seed), theta = rbe_ref_theta(*seed);
    rbe_ref_adam(&r, &moments[0], &moments[1], g_r, lr, epoch);
    rbe_ref_adam(&theta, &moments[2], &moments[3], g_t, lr, epoch);
    seed->lo = rbe_ref_lo(rbe_ref_clamp(r, 0.0f, 1.0f), theta);
    return sqrtf(loss / (float)(rows * cols));
}

/* ---- FusedEncodedLayer (docs/design.md#seed-block-layer) ------------------------------------- */

/* y[m] = W x with float64 accumulation; ragged last block rows are skipped. */
void rbe_ref_layer_forward(const rbe_ref_layer *L, const rbe_ref_seed *seeds,
                           const double *x, double *y)
{
    size_t bi, bj, r, c;
    for (r = 0; r < L->m; r++) y[r] = 0.0;
    for (bi = 0; bi < L->grid_rows; bi++) {
        for (bj = 0; bj < L->grid_cols; bj++) {
            rbe_ref_seed s = seeds[bi * L->grid_cols + bj];
            const double *xs = x + bj * L->bw;
            for (r = 0; r < L->bh && bi * L->bh + r < L->m; r++) {
                double dot = 0.0;
                for (c = 0; c < L->bw; c++)
                    dot += (double)rbe_ref_fused_forward(s, r, c, L->bh, L->bw) * xs[c];
                y[bi * L->bh + r] += dot;
            }
        }
    }
}

/* Per-element SGD in visiting order (docs/design.md#seed-block-layer): each element moves the
 * seed before the next one is visited, and dx uses the updated seed. */
void rbe_ref_layer_backward_precise(const rbe_ref_layer *L, rbe_ref_seed *seeds,
                                    const double *x, const double *dy, float lr,
                                    double *dx)
{
    const float eps = 1e-5f;
    size_t bi, bj, r, c;
    for (c = 0; c < L->n; c++) dx[c] = 0.0;
    for (bi = 0; bi < L->grid_rows; bi++) {
        for (bj = 0; bj < L->grid_cols; bj++) {
            rbe_ref_seed *s = &seeds[bi * L->grid_cols + bj];
            for (r = 0; r < L->bh; r++) {
                float out_grad = (float)dy[bi * L->bh + r];
                for (c = 0; c < L->bw; c++) {
                    float g = out_grad * (float)x[bj * L->bw + c];
                    float rp, tp, dr, dt;
                    s->hi = rbe_ref_state_transition(s->hi, g, r, c);
                    rp = rbe_ref_r(*s);
                    tp = rbe_ref_theta(*s);
                    dr = rbe_ref_central_diff(s->hi, rp, tp, eps, r, c, L->bh, L->bw, 0);
                    dt = rbe_ref_central_diff(s->hi, rp, tp, eps, r, c, L->bh, L->bw, 1);
                    s->lo = rbe_ref_lo(rbe_ref_clamp(rp - lr * (g * dr), 0.0f, 1.0f),
                                       tp - lr * (g * dt));
                    dx[bj * L->bw + c] += (double)out_grad
                        * (double)rbe_ref_fused_forward(*s, r, c, L->bh, L->bw);
                }
            }
        }
    }
}

/* Raw sums of g * dW over each block, then one Adam step per block. moments holds four
 * grid_rows x grid_cols planes: m_r, v_r, m_theta, v_theta. */
void rbe_ref_layer_backward_adam(const rbe_ref_layer *L, rbe_ref_seed *seeds,
                                 const double *x, const double *dy, float *moments,
                                 int epoch, float lr, double *dx)
{
    const float eps = 1e-5f;
    size_t plane = L->grid_rows * L->grid_cols, bi, bj, r, c;
    for (c = 0; c < L->n; c++) dx[c] = 0.0;
    for (bi = 0; bi < L->grid_rows; bi++) {
        for (bj = 0; bj < L->grid_cols; bj++) {
            size_t b = bi * L->grid_cols + bj;
            rbe_ref_seed *s = &seeds[b];
            float g_r = 0.0f, g_t = 0.0f, rp, tp;
            for (r = 0; r < L->bh; r++) {
                float out_grad = (float)dy[bi * L->bh + r];
                for (c = 0; c < L->bw; c++) {
                    float g = out_grad * (float)x[bj * L->bw + c];
                    s->hi = rbe_ref_state_transition(s->hi, g, r, c);
                    rp = rbe_ref_r(*s);
                    tp = rbe_ref_theta(*s);
                    g_r += g * rbe_ref_central_diff(s->hi, rp, tp, eps, r, c, L->bh, L->bw, 0);
                    g_t += g * rbe_ref_central_diff(s->hi, rp, tp, eps, r, c, L->bh, L->bw, 1);
                    dx[bj * L->bw + c] += (double)out_grad
                        * (double)rbe_ref_fused_forward(*s, r, c, L->bh, L->bw);
                }
            }
            rp = rbe_ref_r(*s);
            tp = rbe_ref_theta(*s);
            rbe_ref_adam(&rp, &moments[b], &moments[plane + b], g_r, lr, epoch);
            rbe_ref_adam(&tp, &moments[2 * plane + b], &moments[3 * plane + b], g_t, lr, epoch);
            s->lo = rbe_ref_lo(rbe_ref_clamp(rp, 0.0f, 1.0f), tp);
        }
    }
}

/* ---- evaluation at positions and over whole blocks ---------------------------------------- */

static inline float rbe_ref_eval(int kind, rbe_ref_seed s, size_t i, size_t j, size_t rows,
                                 size_t cols)
{
    switch (kind) {
    case RBE_REF_FORWARD: return rbe_ref_fused_forward(s, i, j, rows, cols);
    case RBE_REF_ADVANCED: return rbe_ref_fused_forward_advanced(s, i, j, rows, cols);
    case RBE_REF_PACKED64: return rbe_ref_packed64(s.hi, i, j, rows, cols);
    case RBE_REF_GRAD_R: return rbe_ref_gradient(s, i, j, rows, cols, 0);
    default: return rbe_ref_gradient(s, i, j, rows, cols, 1);
    }
}

/* out[k] = kind at (i[k], j[k]) of seeds[k], for an R x C block. */
void rbe_ref_pointwise(int kind, const rbe_ref_seed *seeds, const int64_t *i,
                       const int64_t *j, size_t count, size_t rows, size_t cols,
                       float *out)
{
    size_t k;
    for (k = 0; k < count; k++)
        out[k] = rbe_ref_eval(kind, seeds[k], (size_t)i[k], (size_t)j[k], rows, cols);
}

/* out[k][i][j] = kind at every position of seeds[k]'s R x C block. With RBE_REF_FORWARD this is
 * the original weight generation, one function call per weight: the speed baseline. */
void rbe_ref_generate(int kind, const rbe_ref_seed *seeds, size_t count,
                      size_t rows, size_t cols, float *out)
{
    size_t k, i, j;
    for (k = 0; k < count; k++)
        for (i = 0; i < rows; i++)
            for (j = 0; j < cols; j++)
                *out++ = rbe_ref_eval(kind, seeds[k], i, j, rows, cols);
}

#if defined(__clang__)
#pragma float_control(pop)
#endif
