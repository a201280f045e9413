/* Sparse transform-domain products of hybrid blocks.
 *
 * A block (bi, bj) of shape h x w stores (flat index, value) pairs of its coefficient array S,
 * index = r * w + c; block b's pairs are entries offsets[b] .. offsets[b + 1] - 1 of the index and
 * value arrays (ragged: blocks keep different numbers of coefficients). Its residual is
 * G_h S G_w^T. The caller transforms inputs and outputs with dense matrices (BLAS); these
 * kernels do the O(k)-per-block part:
 *
 *   forward_row:   u[bi, r, t, :] += v * z[bj, c, t, :]      (u = S z, one block row)
 *   cols_backward: dz[col0 + c, t, :] += v * a[row0 + r, t, :]  (dz = S^T a, one block column)
 *   value_grads:   grad[e] = a[row0 + r, t, :] . z[col0 + c, t, :]   (one block row)
 *
 * t is the block's slot (its transform, numbered among the transforms in use) and the last
 * axis the batch (contiguous). The backward arrays are feature-major, (cols, nslots, batch)
 * and (rows, nslots, batch). The forward arrays have a layout given per block column and
 * block row (rbe_hybrid_layout), so that the dense transforms around the kernel are single
 * GEMMs in whatever arrangement suits the batch size. Each call writes only the outputs of its
 * own block row (column): callers run different block rows in parallel without atomics, and
 * the sums do not depend on the thread count. Entries whose index is outside their block and
 * blocks whose slot is >= nslots are skipped, so a corrupted index can never address memory
 * outside the arrays.
 */
#ifndef RBE_HYBRID_H
#define RBE_HYBRID_H

#include <stdint.h>

#include "rbe/cpu.h"

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

/* Where the forward product finds z and puts u: element (c, t, i) of block column bj (of
 * width w) is z[(z_base[bj] + (t * w + c) * z_step[bj]) * batch + i], element (r, t, i) of
 * block row bi (of height h) is u[(u_base[bi] + (t * h + r) * u_step[bi]) * batch + i]. */
typedef struct {
    const int64_t *z_base, *z_step;    /* (grid_cols) */
    const int64_t *u_base, *u_step;    /* (grid_rows) */
} rbe_hybrid_layout;

/* floor(2^32 / w) + 1: for index < 2^16 and w <= 2^16 (so index * w < 2^32),
 * (index * magic) >> 32 == index / w exactly, and the loops need no division. */
static inline uint64_t rbe_hybrid_magic(int64_t w) {
    return (UINT64_C(1) << 32) / (uint64_t)w + 1;
}

/* The kernels (rbe/src/hybrid.c), named rbe_hybrid_<op>_<type>[_<target>]. cols_backward
 * and value_grads do one block column (row) per call; forward one block row, selected per SIMD
 * path by rbe_hybrid_select (rbe/dispatch.h) and run as the items of rbe_parallel_for through
 * rbe_hybrid_forward_item. */
void rbe_hybrid_cols_backward_f32(const rbe_hybrid_grid *g, const float *a, float *dz,
                                  int64_t bj);
void rbe_hybrid_cols_backward_f64(const rbe_hybrid_grid *g, const double *a, double *dz,
                                  int64_t bj);
void rbe_hybrid_value_grads_f32(const rbe_hybrid_grid *g, const float *a, const float *z,
                                float *grad, int64_t bi);
void rbe_hybrid_value_grads_f64(const rbe_hybrid_grid *g, const double *a, const double *z,
                                double *grad, int64_t bi);

typedef void rbe_hybrid_forward_f32_kernel(const rbe_hybrid_grid *g, const rbe_hybrid_layout *l,
                                           const float *z, float *u, int64_t bi);
typedef void rbe_hybrid_forward_f64_kernel(const rbe_hybrid_grid *g, const rbe_hybrid_layout *l,
                                           const double *z, double *u, int64_t bi);
typedef rbe_hybrid_forward_f32_kernel *rbe_hybrid_forward_f32_fn;
typedef rbe_hybrid_forward_f64_kernel *rbe_hybrid_forward_f64_fn;

rbe_hybrid_forward_f32_kernel rbe_hybrid_forward_f32_scalar;
rbe_hybrid_forward_f64_kernel rbe_hybrid_forward_f64_scalar;
#ifdef RBE_HAVE_X86_SIMD
rbe_hybrid_forward_f32_kernel rbe_hybrid_forward_f32_avx2;
rbe_hybrid_forward_f64_kernel rbe_hybrid_forward_f64_avx2;
#endif

/* The forward kernels of one SIMD path. */
typedef struct {
    rbe_hybrid_forward_f32_fn f32;
    rbe_hybrid_forward_f64_fn f64;
} rbe_hybrid_forward_ops;

/* One forward product as the items (block rows) of rbe_parallel_for: f32 or f64 is set. */
typedef struct {
    const rbe_hybrid_grid *g;
    const rbe_hybrid_layout *l;
    const void *z;
    void *u;
    rbe_hybrid_forward_f32_fn f32;
    rbe_hybrid_forward_f64_fn f64;
} rbe_hybrid_forward_job;

void rbe_hybrid_forward_item(void *ctx, int64_t bi);

#endif
