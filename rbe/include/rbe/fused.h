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
 *   panel         a band of a block row's weights in grouped order, for a BLAS product with
 *                 grouped inputs
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
#include "rbe/plan.h"
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
/* Rows row0 .. row0 + rows - 1 of a block row's weights in grouped order, row i at
 * panel + (i - row0) * ld. */
typedef void rbe_fused_panel_kernel(const uint64_t *hi, int gc, const rbe_tables *t, int row0,
                                    int rows, float *panel, ptrdiff_t ld);
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

/* ---- per-block sums ------------------------------------------------------------------
 *
 * The layer's per-block moments (docs/design.md#training-seed-blocks: the block means that
 * centring subtracts, the moments of the initialisation, the class sums of the state
 * transitions) come from these sums over a block's valid positions, rows x cols of its
 * h x w: sum W per position class, sum W^2, sum dW/dr, sum dW/dtheta. */
enum {
    RBE_FUSED_SUM_CLASS = 0,     /* RBE_N_CLASSES sums, one per class */
    RBE_FUSED_SUM_SQ = RBE_N_CLASSES,
    RBE_FUSED_SUM_DR = RBE_N_CLASSES + 1,
    RBE_FUSED_SUM_DTH = RBE_N_CLASSES + 2,
    RBE_FUSED_NSUMS = RBE_N_CLASSES + 3
};

/* Floats of per-thread scratch of rbe_fused_block_sums (the block, both gradients when they
 * are summed, and the block kernel's own); rbe_fused_block_sums_precise takes as many doubles. */
static inline ptrdiff_t rbe_fused_sums_scratch_floats(const rbe_tables *t, int with_grad)
{
    return (with_grad ? 3 : 1) * (ptrdiff_t)t->h * t->w + rbe_scratch_floats(t->g);
}

/* The sums of one block from the fast block kernel fn (rbe/src/fused_plan.c); without
 * with_grad, the sums of the gradients are 0 (and the block costs a third). */
void rbe_fused_block_sums(rbe_block_fn fn, int family, uint64_t hi, const rbe_tables *t,
                          int rows, int cols, int with_grad, float *scratch, double *sums);
/* The same in precise mode. */
void rbe_fused_block_sums_precise(uint64_t hi, int h, int w, int rows, int cols, int with_grad,
                                  double *scratch, double *sums);

/* ---- the forward product --------------------------------------------------------------
 *
 * y = x W_eff^T + b for a batch of inputs, with W_eff = alpha s (W - c mean W) + beta per
 * block (docs/design.md#training-seed-blocks), planned once per layer: rbe/_fused.pyx builds
 * and validates the plan and keeps hi and the block means current. One call
 *
 *   1. checks x and groups it into xp (the permutation `source`; 0 in padding), summing each
 *      block column's inputs for the offsets;
 *   2. runs the block rows in parallel (OpenMP), each thread owning its output rows:
 *        one vector  the gemv kernel over tiles of vec_tile_cols block columns, each block's
 *                    input slice scaled by alpha s;
 *        a batch     the panel kernel over bands of band_rows rows and tiles of tile_cols
 *                    block columns into the thread's panel (each block scaled by alpha s),
 *                    times the batch by sgemm;
 *      then adds the offsets (beta - c alpha s mean W times the block column sums) and the
 *      bias, and writes y in x's type;
 *   3. checks y.
 *
 * The tiles keep every thread's workspace within a bound (RBE_FUSED_TILE_FLOATS floats unless
 * the plan is given another; a band is at least 8 rows of one block), whatever the layer's
 * shape. A layer whose block rows fit the bound has one tile per block row. */
#define RBE_FUSED_TILE_FLOATS (INT64_C(1) << 20)

typedef struct {
    int64_t in_features, out_features, grid_rows, grid_cols;
    rbe_tables t;
    int64_t kp;                  /* grouped input width, grid_cols * 4g */
    const int64_t *source;       /* (kp) input column of each grouped position, -1: padding */
    int centred;                 /* W_eff subtracts the block means */
    int64_t band_rows, tile_cols, vec_tile_cols;   /* set by rbe_fused_plan_tiles */
} rbe_fused_plan;

/* band_rows, tile_cols and vec_tile_cols of a plan whose other fields are set, for a workspace
 * of tile_floats floats per thread. */
void rbe_fused_plan_tiles(rbe_fused_plan *p, int64_t tile_floats);

typedef struct {
    const rbe_fused_plan *plan;
    rbe_fused_ops ops;           /* of the SIMD path and family to run */
    const uint64_t *hi;          /* (grid_rows * grid_cols) seeds' hi words */
    const double *mean;          /* (grid_rows * grid_cols) block means over valid positions,
                                    read where the plan is centred */
    const float *scale;          /* (grid_rows * grid_cols) block scales, or NULL */
    float alpha, beta;
    const float *bias;           /* (out_features) or NULL */
    int64_t batch;
    int f64;                     /* x and y are double, else float */
    const void *x;               /* (batch, in_features), row-major */
    void *y;                     /* (batch, out_features), row-major */
    float *work;                 /* rbe_fused_work_floats(plan, batch, f64, threads) floats */
    rbe_sgemm_fn *sgemm;
} rbe_fused_forward_job;

/* Floats of work a forward of `batch` inputs on `threads` threads needs. */
int64_t rbe_fused_work_floats(const rbe_fused_plan *p, int64_t batch, int f64, int threads);

/* The forward product on `threads` OpenMP threads; returns an RBE_PLAN_ status. */
int rbe_fused_forward(const rbe_fused_forward_job *job, int threads);

#endif
