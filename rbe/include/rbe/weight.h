/* The weight function of seed blocks (docs/design.md#weight-function), in precise (float64,
 * libm) and fast (float32, tables + approximations) modes.
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
 *
 * The fast block kernels are rbe_block_<family>_<target> (rbe/src/block_scalar.c,
 * rbe/src/block_avx2.c), selected by rbe_block_select (rbe/dispatch.h).
 */
#ifndef RBE_WEIGHT_H
#define RBE_WEIGHT_H

#include <stddef.h>
#include <stdint.h>

#include "rbe/approx.h"
#include "rbe/cpu.h"
#include "rbe/fixed_point.h"

/* Per-shape tables, [h][4][g] float32 each (g a multiple of 8, w <= 4g); padding lanes hold
 * zeros. */
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

void rbe_seed32_init(uint64_t hi, int family, rbe_seed32 *s);

/* Rows evaluated class by class before they are transposed to natural order. */
#define RBE_PANEL_ROWS 8

/* Floats of per-thread scratch a fast block kernel needs: two panels (a top one and its
 * mirror) of weights and both gradients. */
static inline ptrdiff_t rbe_scratch_floats(int g) { return (ptrdiff_t)6 * RBE_PANEL_ROWS * 4 * g; }

/* Precise mode: the h x w weights of one seed, [h][w] float64, and when dr != NULL
 * dW/dr and dW/dtheta (rbe/src/weight.c). */
void rbe_block_precise(uint64_t hi, int h, int w, double *W, double *dr, double *dth);

/* A fast block kernel: the weights of one seed, [h][w], and when dr != NULL dW/dr and
 * dW/dtheta into dr and dth. scratch: rbe_scratch_floats(t->g) floats owned by the calling
 * thread; stream: a hint that the output is too large to stay in cache (non-temporal stores
 * where aligned). */
typedef void rbe_block_kernel(const rbe_seed32 *s, const rbe_tables *t, float *W, float *dr,
                              float *dth, float *scratch, int stream);
typedef rbe_block_kernel *rbe_block_fn;

rbe_block_kernel rbe_block_poly_scalar, rbe_block_lut_scalar, rbe_block_cordic_scalar;
#ifdef RBE_HAVE_X86_SIMD
rbe_block_kernel rbe_block_poly_avx2, rbe_block_lut_avx2, rbe_block_cordic_avx2;
rbe_block_kernel rbe_block_poly_avx2_vl, rbe_block_lut_avx2_vl, rbe_block_cordic_avx2_vl;
#endif

/* Decode seed hi for `family` and run the block kernel fn on it. */
void rbe_generate_block(rbe_block_fn fn, int family, uint64_t hi, const rbe_tables *t,
                        float *W, float *dr, float *dth, float *scratch, int stream);

#endif
