/* Sparse transform-domain products of hybrid blocks.
 *
 * A block (bi, bj) of shape h x w stores (flat index, value) pairs of its coefficient array S,
 * index = r * w + c; block b's pairs are entries offsets[b] .. offsets[b + 1] - 1 of the index and
 * value arrays (ragged: blocks keep different numbers of coefficients). Its residual is
 * G_h S G_w^T. The caller transforms inputs and outputs with dense matrices (BLAS); these
 * kernels do the O(k)-per-block part:
 *
 *   rows:          u[q, :] = sum_e v_e * z[zrow_e, :]        (u = S z, by output row)
 *   cols_backward: dz[col0 + c, t, :] += v * a[row0 + r, t, :]  (dz = S^T a, one block column)
 *   value_grads:   grad[e] = a[row0 + r, t, :] . z[col0 + c, t, :]   (one block row)
 *
 * t is the block's slot (its transform, numbered among the transforms in use) and the last
 * axis the batch (contiguous). The backward arrays are feature-major, (cols, nslots, batch)
 * and (rows, nslots, batch); the forward product has its own plan (below). Each call writes
 * only the outputs of its own block row (column): callers run different block rows in
 * parallel without atomics, and the sums do not depend on the thread count. In the backward
 * kernels, entries whose index is outside their block and blocks whose slot is >= nslots are
 * skipped, so a corrupted index can never address memory outside the arrays; the forward
 * plan is validated once when it is built.
 */
#ifndef RBE_HYBRID_H
#define RBE_HYBRID_H

#include <stdint.h>

#include "rbe/cpu.h"
#include "rbe/plan.h"

typedef struct {
    int64_t rows, cols;            /* matrix shape */
    int64_t bh, bw;                /* full block shape; edge blocks are smaller */
    int64_t grid_rows, grid_cols;  /* blocks per column and per row */
    int64_t nslots;                /* transforms in use */
    int64_t batch;                 /* inputs per product */
    uint64_t magic_full;           /* rbe_hybrid_magic(bw) */
    const uint8_t *slot;           /* (grid_rows * grid_cols) */
    const int64_t *offsets;        /* (grid_rows * grid_cols + 1), non-decreasing from 0 */
    const uint16_t *index;         /* (offsets[nblocks]) */
    const float *values;           /* (offsets[nblocks]) */
} rbe_hybrid_grid;

/* floor(2^32 / w) + 1: for index < 2^16 and w <= 2^16 (so index * w < 2^32),
 * (index * magic) >> 32 == index / w exactly, and the loops need no division. */
static inline uint64_t rbe_hybrid_magic(int64_t w) {
    return (UINT64_C(1) << 32) / (uint64_t)w + 1;
}

/* The kernels (rbe/src/hybrid.c), named rbe_hybrid_<op>_<type>[_<target>]. cols_backward
 * and value_grads do one block column (row) per call; the forward product is below. */
void rbe_hybrid_cols_backward_f32(const rbe_hybrid_grid *g, const float *a, float *dz,
                                  int64_t bj);
void rbe_hybrid_cols_backward_f64(const rbe_hybrid_grid *g, const double *a, double *dz,
                                  int64_t bj);
void rbe_hybrid_value_grads_f32(const rbe_hybrid_grid *g, const float *a, const float *z,
                                float *grad, int64_t bi);
void rbe_hybrid_value_grads_f64(const rbe_hybrid_grid *g, const double *a, const double *z,
                                double *grad, int64_t bi);

/* ---- the forward product ------------------------------------------------------------
 *
 * y = W x + b for a batch of inputs, planned once per layer (rbe/_hybrid.pyx builds and
 * validates the plan from rbe.hybrid's layout) and run in two phases:
 *
 *   columns: z rows z0[j] .. z0[j] + zw of block column j = M_j x_j: its transform-domain
 *            values (one group of rows per transform in use) and its basis projections;
 *   rows:    u = S z row by row (the sparse rows), the basis sums of block row i, and
 *            y_i = M_i u_i + b_i + p F_out,i^T, the outputs of block row i.
 *
 * With a low-rank term F_out F_in^T (rank > 0), the columns phase has one more item, the
 * projections p = x F_in (batch, rank), which the rows phase then reads.
 *
 * z and u are feature-major with the batch contiguous: row q is elements q * batch ...
 * The first row_sparse rows of a block row's u are sparse rows, the others its basis sums
 * (zero where no term writes them). Sparse row q of u is sum_e values[src[e]] * z row
 * zrow[e] over e = rowptr[q] .. rowptr[q + 1] - 1, in that order (entries sorted by the row
 * they add to, so the products accumulate in registers and nothing is scattered). A block
 * row's basis sums are, per basis term t, the (8, rank * batch) matrix C_t^T P_t at u row
 * u0[i] + term_sums[t]: C_t the coefficients of the term's term_count[t] blocks (8 per block,
 * consecutive), P_t the rank projection rows at z0[j] + term_proj[t] of those blocks'
 * columns, equally spaced in z. Items are runs of block columns (rows) of one class,
 * consecutive in x and z (y and u), so that one vector's run is a single GEMM (a batch's runs
 * are single block columns or rows). Every item writes only its own rows of z (u, y): results
 * do not depend on the thread count. The two phases run as one rbe_parallel_phases loop. */

typedef struct {
    int64_t in_features, out_features;
    int64_t z_rows, u_rows;                   /* rows of z and u (times the batch: elements) */
    int64_t ncols, nrows;                     /* block columns, block rows */
    const int64_t *col_x0, *col_z0, *col_class;       /* (ncols) */
    const int64_t *col_n, *col_zw;                    /* per column class */
    const void *const *col_matrix;                    /* per column class, (zw, n) row-major */
    const int64_t *row_y0, *row_u0, *row_class;       /* (nrows) */
    const int64_t *row_h, *row_uw;                    /* per row class */
    const int64_t *row_sparse;    /* per row class: leading u rows of a block row that are sparse */
    const void *const *row_matrix;                    /* per row class, (h, uw) row-major */
    const int64_t *rowptr;                    /* (u_rows + 1) */
    const uint32_t *src, *zrow;               /* (rowptr[u_rows]) */
    const int64_t *row_terms;                 /* (nrows + 1): basis terms of each block row */
    const int64_t *term_col, *term_count, *term_proj, *term_rank, *term_sums;
} rbe_hybrid_plan;

/* Sparse rows q0 .. q1 - 1 of u for a batch (u[q * batch + i], overwritten), one SIMD path. */
typedef void rbe_hybrid_rows_f32_kernel(const rbe_hybrid_plan *p, const float *values,
                                        const float *z, float *u, int64_t batch, int64_t q0,
                                        int64_t q1);
typedef void rbe_hybrid_rows_f64_kernel(const rbe_hybrid_plan *p, const float *values,
                                        const double *z, double *u, int64_t batch, int64_t q0,
                                        int64_t q1);
typedef rbe_hybrid_rows_f32_kernel *rbe_hybrid_rows_f32_fn;
typedef rbe_hybrid_rows_f64_kernel *rbe_hybrid_rows_f64_fn;

rbe_hybrid_rows_f32_kernel rbe_hybrid_rows_f32_scalar;
rbe_hybrid_rows_f64_kernel rbe_hybrid_rows_f64_scalar;
#ifdef RBE_HAVE_X86_SIMD
rbe_hybrid_rows_f32_kernel rbe_hybrid_rows_f32_avx2;
rbe_hybrid_rows_f64_kernel rbe_hybrid_rows_f64_avx2;
#endif

/* The sparse-row kernels of one SIMD path. */
typedef struct {
    rbe_hybrid_rows_f32_fn f32;
    rbe_hybrid_rows_f64_fn f64;
} rbe_hybrid_rows_ops;

/* One forward product: the float32 members (sgemm, rows_f32) or the float64 ones are set,
 * and x, y, z, u and projections are of that type; x is (batch, in_features) and y (batch,
 * out_features), row-major. The layer's parameters are float32: values, coef (nrows * ncols
 * * 8), bias (out_features) or NULL, factor_in (in_features, rank) and factor_out
 * (out_features, rank), row-major. A float64 product converts coef and the factors into
 * `converted` (n_coef + (in_features + out_features) * rank doubles). */
typedef struct {
    const rbe_hybrid_plan *plan;
    int64_t batch;
    const int64_t *col_runs, *row_runs;   /* item t: block columns (rows) runs[t] .. runs[t+1]-1 */
    int64_t n_col_runs, n_row_runs;
    const float *values, *coef, *bias;
    int64_t n_coef, rank;
    const float *factor_in, *factor_out;
    const void *x;
    void *z, *u, *y, *projections, *converted;
    rbe_sgemm_fn *sgemm;
    rbe_dgemm_fn *dgemm;
    rbe_hybrid_rows_f32_fn rows_f32;
    rbe_hybrid_rows_f64_fn rows_f64;
} rbe_hybrid_forward_job;

/* The forward product: checks x, runs the two phases as one rbe_parallel_phases loop on up
 * to `threads` threads, checks y; returns an RBE_PLAN_ status (rbe/plan.h). */
int rbe_hybrid_forward(const rbe_hybrid_forward_job *job, int threads);

#endif
