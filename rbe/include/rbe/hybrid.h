/* Sparse transform-domain products of hybrid blocks.
 *
 * A block (bi, bj) of shape h x w stores (flat index, value) pairs of its coefficient array S,
 * index = r * w + c; block b's pairs are entries offsets[b] .. offsets[b + 1] - 1 of the index and
 * value arrays (ragged: blocks keep different numbers of coefficients). Its residual is G_h S G_w^T. The caller transforms inputs and outputs with
 * dense matrices (BLAS); these kernels do the O(k)-per-block part:
 *
 *   rows_forward:  u[row0 + r, t, :] += v * z[col0 + c, t, :]   (u = S z, one block row)
 *   cols_backward: dz[col0 + c, t, :] += v * a[row0 + r, t, :]  (dz = S^T a, one block column)
 *   value_grads:   grad[e] = a[row0 + r, t, :] . z[col0 + c, t, :]   (one block row)
 *
 * Arrays are feature-major: z and dz are (cols, nslots, batch), u and a are (rows, nslots, batch)
 * and t is the block's slot (its transform, numbered among the transforms in use), so that one
 * GEMM per block row or column applies every transform at once. Each call writes only the rows
 * (or columns) of its own block row (column): callers run different block rows in parallel
 * without atomics, and the sums do not depend on the thread count. Entries whose index is outside
 * their block and blocks whose slot is >= nslots are skipped, so a corrupted index can never
 * address memory outside the arrays.
 */
#ifndef RBE_HYBRID_H
#define RBE_HYBRID_H

#include <stdint.h>

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

/* One block: where its rows and columns start and how to split its flat indices. */
typedef struct {
    int64_t row0, col0, w, size, count, slot;
    uint64_t magic;
    const uint16_t *index;
    const float *values;
} rbe_hybrid_block;

static inline rbe_hybrid_block rbe_hybrid_block_at(const rbe_hybrid_grid *g, int64_t bi,
                                                   int64_t bj) {
    rbe_hybrid_block b;
    const int64_t id = bi * g->grid_cols + bj;
    const int64_t h = g->rows - bi * g->bh < g->bh ? g->rows - bi * g->bh : g->bh;
    b.w = g->cols - bj * g->bw < g->bw ? g->cols - bj * g->bw : g->bw;
    b.row0 = bi * g->bh;
    b.col0 = bj * g->bw;
    b.size = h * b.w;
    b.count = g->offsets[id + 1] - g->offsets[id];
    b.slot = g->slot[id];
    b.magic = b.w == g->bw ? g->magic_full : rbe_hybrid_magic(b.w);
    b.index = g->index + g->offsets[id];
    b.values = g->values + g->offsets[id];
    return b;
}

/* Row and column of an entry; 0 with *ok = 0 when the index is outside the block. */
static inline void rbe_hybrid_split(const rbe_hybrid_block *b, uint16_t index, int64_t *r,
                                    int64_t *c, int *ok) {
    const int64_t row = (int64_t)(((uint64_t)index * b->magic) >> 32);
    *ok = index < b->size;
    *r = *ok ? row : 0;
    *c = *ok ? index - row * b->w : 0;
}

/* Below this many multiply-adds (entries x batch) a call runs on one thread. The transforms
 * around each call run in BLAS, whose threads keep spinning for a while after every call; a team
 * started right after them competes for the same cores. Measured on 2 cores with OpenBLAS: a
 * 4096^2 batch-64 product took 7.4 ms with one kernel thread and 15 ms with two, a GEMV 0.8 ms
 * and 8 to 60 ms. Only products large enough to outlast that contention use the team. */
#define RBE_HYBRID_PARALLEL_MIN (INT64_C(1) << 26)

#define RBE_HYBRID_KERNELS(T, SUFFIX)                                                          \
/* dst[r * stride] += v * src[c * stride] for every entry of the block (batch of one). Entries  \
 * outside the block contribute 0 at position 0 (branch-free). */                              \
static inline void rbe_hybrid_scatter1_##SUFFIX(const rbe_hybrid_block *b, const T *src,       \
                                                T *dst, int64_t stride, int transpose) {       \
    for (int64_t e = 0; e < b->count; ++e) {                                                   \
        int64_t r, c;                                                                          \
        int ok;                                                                                \
        rbe_hybrid_split(b, b->index[e], &r, &c, &ok);                                         \
        const T v = ok ? (T)b->values[e] : (T)0;                                               \
        if (transpose) dst[c * stride] += v * src[r * stride];                                 \
        else dst[r * stride] += v * src[c * stride];                                           \
    }                                                                                          \
}                                                                                              \
                                                                                               \
/* The same for a batch: contiguous axpys of length nb. */                                     \
static inline void rbe_hybrid_scatter_##SUFFIX(const rbe_hybrid_block *b, const T *src,        \
                                               T *dst, int64_t stride, int64_t nb,             \
                                               int transpose) {                                \
    if (nb == 1) {                                                                             \
        rbe_hybrid_scatter1_##SUFFIX(b, src, dst, stride, transpose);                          \
        return;                                                                                \
    }                                                                                          \
    for (int64_t e = 0; e < b->count; ++e) {                                                   \
        int64_t r, c;                                                                          \
        int ok;                                                                                \
        rbe_hybrid_split(b, b->index[e], &r, &c, &ok);                                         \
        if (!ok) continue;                                                                     \
        const T v = (T)b->values[e];                                                           \
        const T *s = src + (transpose ? r : c) * stride;                                       \
        T *d = dst + (transpose ? c : r) * stride;                                             \
        for (int64_t i = 0; i < nb; ++i) d[i] += v * s[i];                                     \
    }                                                                                          \
}                                                                                              \
                                                                                               \
static inline void rbe_hybrid_rows_forward_##SUFFIX(const rbe_hybrid_grid *g, const T *z,      \
                                                    T *u, int64_t bi) {                        \
    const int64_t nb = g->batch, stride = g->nslots * nb;                                      \
    for (int64_t bj = 0; bj < g->grid_cols; ++bj) {                                            \
        const rbe_hybrid_block b = rbe_hybrid_block_at(g, bi, bj);                             \
        if (b.slot >= g->nslots) continue;                                                     \
        rbe_hybrid_scatter_##SUFFIX(&b, z + b.col0 * stride + b.slot * nb,                     \
                                    u + b.row0 * stride + b.slot * nb, stride, nb, 0);         \
    }                                                                                          \
}                                                                                              \
                                                                                               \
static inline void rbe_hybrid_cols_backward_##SUFFIX(const rbe_hybrid_grid *g, const T *a,     \
                                                     T *dz, int64_t bj) {                      \
    const int64_t nb = g->batch, stride = g->nslots * nb;                                      \
    for (int64_t bi = 0; bi < g->grid_rows; ++bi) {                                            \
        const rbe_hybrid_block b = rbe_hybrid_block_at(g, bi, bj);                             \
        if (b.slot >= g->nslots) continue;                                                     \
        rbe_hybrid_scatter_##SUFFIX(&b, a + b.row0 * stride + b.slot * nb,                     \
                                    dz + b.col0 * stride + b.slot * nb, stride, nb, 1);        \
    }                                                                                          \
}                                                                                              \
                                                                                               \
static inline void rbe_hybrid_value_grads_##SUFFIX(const rbe_hybrid_grid *g, const T *a,      \
                                                   const T *z, T *grad, int64_t bi) {          \
    const int64_t nb = g->batch, stride = g->nslots * nb;                                      \
    for (int64_t bj = 0; bj < g->grid_cols; ++bj) {                                            \
        const rbe_hybrid_block b = rbe_hybrid_block_at(g, bi, bj);                             \
        T *out = grad + g->offsets[bi * g->grid_cols + bj];                                    \
        for (int64_t e = 0; e < b.count; ++e) out[e] = 0;                                      \
        if (b.slot >= g->nslots) continue;                                                     \
        const T *at = a + b.row0 * stride + b.slot * nb;                                       \
        const T *zt = z + b.col0 * stride + b.slot * nb;                                       \
        for (int64_t e = 0; e < b.count; ++e) {                                                \
            int64_t r, c;                                                                      \
            int ok;                                                                            \
            rbe_hybrid_split(&b, b.index[e], &r, &c, &ok);                                     \
            const T *x = at + r * stride, *y = zt + c * stride;                                \
            double sum = 0.0;                                                                  \
            for (int64_t i = 0; i < nb; ++i) sum += (double)x[i] * (double)y[i];               \
            out[e] = ok ? (T)sum : (T)0;                                                       \
        }                                                                                      \
    }                                                                                          \
}

RBE_HYBRID_KERNELS(float, f32)
RBE_HYBRID_KERNELS(double, f64)

#endif
