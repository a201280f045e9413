/* Kernels of the fused seed-block layer (docs/design.md#training-seed-blocks and
 * docs/design.md#kernels-data-layout-and-dispatch): weights are generated in the
 * class-grouped layout of rbe/weight.h and consumed where they are made, never stored whole.
 *
 * A layer is a grid of block rows x block columns of the nominal block shape h x w (the
 * tables' shape); edge blocks are the full block cropped. Inputs are passed *grouped*: for
 * block column bj, xp[bj*4g + p*g + q] = x[bj*w + 4q + p], zero where that column is past the
 * layer's inputs or q is past the group. Each weight group (row i, group p) then meets a
 * contiguous slice of the input, and no weight has to be moved back to natural order.
 *
 * Four operations, each defined per approximation family and SIMD path as
 * rbe_fused_<op>_<family>_<target> (rbe/src/fused_scalar.c, rbe/src/fused_avx2.c) and
 * selected by rbe_fused_select (rbe/dispatch.h):
 *   gemv          y[0..rows) = (block row of W) . xp, accumulated in registers
 *   panel         a block row's weights in grouped order, for a BLAS product with grouped
 *                 inputs
 *   backward      one block: its weights (grouped, for dX), and with G = dY^T X of the block
 *                 the sums of docs/design.md#training-seed-blocks (dL/dr, dL/dtheta, sum G W,
 *                 state-transition deltas)
 *   backward_vec  the same for one input vector, with G = dy x^T formed in registers and
 *                 dx += W^T dy accumulated in place: no tiles, no BLAS calls
 */
#ifndef RBE_FUSED_H
#define RBE_FUSED_H

#include <stddef.h>
#include <stdint.h>

#include "rbe/cpu.h"
#include "rbe/weight.h"

/* Per-block sums written by the backward kernels, all over the block's valid positions.
 * Per class c at RBE_FUSED_CLASS + 4c: sum G W (current state), sum G (W(pos s) - W),
 * sum G (W(neg s) - W), sum |G (alpha W + beta)|. */
enum {
    RBE_FUSED_DR = 0,      /* sum G dW/dr */
    RBE_FUSED_DTH = 1,     /* sum G dW/dtheta */
    RBE_FUSED_GW = 2,      /* sum G W */
    RBE_FUSED_CLASS = 3,
    RBE_FUSED_NSTATS = RBE_FUSED_CLASS + 4 * RBE_N_CLASSES
};
enum { RBE_FUSED_CUR = 0, RBE_FUSED_POS = 1, RBE_FUSED_NEG = 2, RBE_FUSED_ABS = 3 };

/* The seed's derivative map and its inverse (docs/design.md#state-transitions): the states a
 * class may move to. Constant-folded where the state is a compile-time constant. */
static inline int rbe_pos_state(int s)
{
    return s == 0 ? 1 : s == 1 ? 0 : s == 2 ? 3 : s == 3 ? 2 : s == 7 ? 4 : s + 1;
}
static inline int rbe_neg_state(int s) { return 7 - s; }

/* y[0..rows) = block row of W (seeds hi[0..gc)) . xp; xpr: xp with each block column's slice
 * reversed (enables the rotation pairs of the AVX2 kernels; may be NULL); acc: per-thread
 * scratch of 8 h + 2 g floats. */
typedef void rbe_fused_gemv_kernel(const uint64_t *hi, int gc, const rbe_tables *t, int rows,
                                   const float *xp, const float *xpr, float *y, float *acc);
/* A block row's weights in grouped order, row i at panel + i * ld. */
typedef void rbe_fused_panel_kernel(const uint64_t *hi, int gc, const rbe_tables *t, int rows,
                                    float *panel, ptrdiff_t ld);
/* One block: W (grouped, row stride 4g) and its stats from the tile G = dY^T X. */
typedef void rbe_fused_backward_kernel(uint64_t hi, const rbe_tables *t, int rows,
                                       const float *G, float *W, float alpha, float beta,
                                       double *stats);
/* dx (+)= the block's dy W and its stats, for one input vector x (grouped block slice; xr its
 * reverse, dy the block's rows); scratch: rbe_fused_vec_scratch_floats per thread. */
typedef void rbe_fused_backward_vec_kernel(uint64_t hi, const rbe_tables *t, int rows,
                                           const float *x, const float *xr, const float *dy,
                                           float *dx, float *scratch, float alpha, float beta,
                                           double *stats);

typedef rbe_fused_gemv_kernel *rbe_fused_gemv_fn;
typedef rbe_fused_panel_kernel *rbe_fused_panel_fn;
typedef rbe_fused_backward_kernel *rbe_fused_backward_fn;
typedef rbe_fused_backward_vec_kernel *rbe_fused_backward_vec_fn;

/* The four operations of one (SIMD path, approximation family). */
typedef struct {
    rbe_fused_gemv_fn gemv;
    rbe_fused_panel_fn panel;
    rbe_fused_backward_fn backward;
    rbe_fused_backward_vec_fn backward_vec;
} rbe_fused_ops;

/* Floats of per-thread scratch that backward_vec needs (the scalar version's two tiles). */
static inline ptrdiff_t rbe_fused_vec_scratch_floats(const rbe_tables *t)
{
    return 2 * (ptrdiff_t)t->h * 4 * t->g;
}

rbe_fused_gemv_kernel rbe_fused_gemv_poly_scalar, rbe_fused_gemv_lut_scalar,
    rbe_fused_gemv_cordic_scalar;
rbe_fused_panel_kernel rbe_fused_panel_poly_scalar, rbe_fused_panel_lut_scalar,
    rbe_fused_panel_cordic_scalar;
rbe_fused_backward_kernel rbe_fused_backward_poly_scalar, rbe_fused_backward_lut_scalar,
    rbe_fused_backward_cordic_scalar;
rbe_fused_backward_vec_kernel rbe_fused_backward_vec_poly_scalar,
    rbe_fused_backward_vec_lut_scalar, rbe_fused_backward_vec_cordic_scalar;

#ifdef RBE_HAVE_X86_SIMD
rbe_fused_gemv_kernel rbe_fused_gemv_poly_avx2, rbe_fused_gemv_lut_avx2,
    rbe_fused_gemv_cordic_avx2;
rbe_fused_panel_kernel rbe_fused_panel_poly_avx2, rbe_fused_panel_lut_avx2,
    rbe_fused_panel_cordic_avx2;
rbe_fused_backward_kernel rbe_fused_backward_poly_avx2, rbe_fused_backward_lut_avx2,
    rbe_fused_backward_cordic_avx2;
rbe_fused_backward_vec_kernel rbe_fused_backward_vec_poly_avx2,
    rbe_fused_backward_vec_lut_avx2, rbe_fused_backward_vec_cordic_avx2;

rbe_fused_gemv_kernel rbe_fused_gemv_poly_avx2_vl, rbe_fused_gemv_lut_avx2_vl,
    rbe_fused_gemv_cordic_avx2_vl;
rbe_fused_panel_kernel rbe_fused_panel_poly_avx2_vl, rbe_fused_panel_lut_avx2_vl,
    rbe_fused_panel_cordic_avx2_vl;
rbe_fused_backward_kernel rbe_fused_backward_poly_avx2_vl, rbe_fused_backward_lut_avx2_vl,
    rbe_fused_backward_cordic_avx2_vl;
rbe_fused_backward_vec_kernel rbe_fused_backward_vec_poly_avx2_vl,
    rbe_fused_backward_vec_lut_avx2_vl, rbe_fused_backward_vec_cordic_avx2_vl;
#endif

#endif
