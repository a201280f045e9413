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

#include "cpu.h"

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

/* Forward product of one block row, u[bi] += S z (layout above). One vector: the entries of
 * a block run as four interleaved streams, so that consecutive updates of one output (entries
 * are sorted by row) do not wait for each other, and a power-of-two block width splits
 * indices with shifts (the multiplies of the general split would bound the loop). A batch:
 * one axpy of the batch per entry, which the compiler vectorises (8 floats wide in the AVX2
 * variant). Neither contracts a multiply and add (ISO C), so every variant gives the same
 * sums. Entries outside their block add 0 to the block's first output (branch-free). */
#define RBE_HYBRID_FORWARD(T, SUFFIX, TARGET)                                                  \
/* v * z[c] of entry k, and where it goes (the product is 0 for an entry outside its block). */ \
static inline T rbe_hybrid_term_##SUFFIX(const rbe_hybrid_block *b, int64_t k, const T *zt,    \
                                         int64_t z_col, int64_t u_row, int shift,              \
                                         int64_t *at) {                                        \
    uint32_t i = b->index[k];                                                                  \
    T v = (T)b->values[k];                                                                     \
    const int ok = i < (uint32_t)b->size;                                                      \
    i = ok ? i : 0;                                                                            \
    v = ok ? v : (T)0;                                                                         \
    const uint32_t w = (uint32_t)b->w;                                                         \
    const uint32_t r = shift >= 0 ? i >> shift : (uint32_t)(((uint64_t)i * b->magic) >> 32);  \
    const uint32_t c = shift >= 0 ? i & (w - 1) : i - r * w;                                   \
    *at = r * u_row;                                                                           \
    return v * zt[c * z_col];                                                                  \
}                                                                                              \
                                                                                               \
/* ut[r * u_row] += v * zt[c * z_col] over a block's entries; shift: log2 of a power-of-two    \
 * block width, else -1. */                                                                    \
static inline void rbe_hybrid_gemv_block_##SUFFIX(const rbe_hybrid_block *b, const T *zt,      \
                                                  T *ut, int64_t z_col, int64_t u_row,         \
                                                  int shift) {                                 \
    const int64_t q = b->count / 4;                                                            \
    for (int64_t e = 0; e < q; ++e) {                                                          \
        int64_t at[4];                                                                         \
        T p[4];                                                                                \
        for (int s = 0; s < 4; ++s)                                                            \
            p[s] = rbe_hybrid_term_##SUFFIX(b, e + s * q, zt, z_col, u_row, shift, &at[s]);    \
        for (int s = 0; s < 4; ++s) ut[at[s]] += p[s];                                         \
    }                                                                                          \
    for (int64_t e = 4 * q; e < b->count; ++e) {                                               \
        int64_t at;                                                                            \
        const T p = rbe_hybrid_term_##SUFFIX(b, e, zt, z_col, u_row, shift, &at);              \
        ut[at] += p;                                                                           \
    }                                                                                          \
}                                                                                              \
                                                                                               \
TARGET static void rbe_hybrid_forward_row_##SUFFIX(const rbe_hybrid_grid *g,                   \
                                                   const rbe_hybrid_layout *l, const T *z,     \
                                                   T *u, int64_t bi) {                         \
    const int64_t nb = g->batch;                                                               \
    for (int64_t bj = 0; bj < g->grid_cols; ++bj) {                                            \
        const rbe_hybrid_block b = rbe_hybrid_block_at(g, bi, bj);                             \
        if (b.slot >= g->nslots) continue;                                                     \
        const int64_t h = b.size / b.w;                                                        \
        const T *zt = z + (l->z_base[bj] + b.slot * b.w * l->z_step[bj]) * nb;                 \
        T *ut = u + (l->u_base[bi] + b.slot * h * l->u_step[bi]) * nb;                         \
        const int64_t z_col = l->z_step[bj] * nb, u_row = l->u_step[bi] * nb;                  \
        int shift = (b.w & (b.w - 1)) == 0 ? 0 : -1;                                           \
        while (shift >= 0 && (INT64_C(1) << shift) < b.w) ++shift;                             \
        if (nb == 1 && z_col == 1 && u_row == 1 && shift == 6) {                               \
            rbe_hybrid_gemv_block_##SUFFIX(&b, zt, ut, 1, 1, 6);    /* 64 wide: the default */ \
            continue;                                                                          \
        }                                                                                      \
        if (nb == 1) {                                                                         \
            rbe_hybrid_gemv_block_##SUFFIX(&b, zt, ut, z_col, u_row, shift);                   \
            continue;                                                                          \
        }                                                                                      \
        for (int64_t e = 0; e < b.count; ++e) {                                                \
            int64_t r, c;                                                                      \
            int ok;                                                                            \
            rbe_hybrid_split(&b, b.index[e], &r, &c, &ok);                                     \
            const T v = ok ? (T)b.values[e] : (T)0;                                            \
            const T *src = zt + c * z_col;                                                     \
            T *dst = ut + r * u_row;                                                           \
            for (int64_t i = 0; i < nb; ++i) dst[i] += v * src[i];                             \
        }                                                                                      \
    }                                                                                          \
}

#define RBE_NO_TARGET
RBE_HYBRID_FORWARD(float, f32, RBE_NO_TARGET)
RBE_HYBRID_FORWARD(double, f64, RBE_NO_TARGET)
#ifdef RBE_HAVE_X86_SIMD
RBE_HYBRID_FORWARD(float, f32_avx2, RBE_TARGET_AVX2)
RBE_HYBRID_FORWARD(double, f64_avx2, RBE_TARGET_AVX2)
#endif
#undef RBE_NO_TARGET

typedef void (*rbe_hybrid_forward_f32_fn)(const rbe_hybrid_grid *, const rbe_hybrid_layout *,
                                          const float *, float *, int64_t);
typedef void (*rbe_hybrid_forward_f64_fn)(const rbe_hybrid_grid *, const rbe_hybrid_layout *,
                                          const double *, double *, int64_t);

/* One forward product as the items (block rows) of rbe_parallel_for: f32 or f64 is set. */
typedef struct {
    const rbe_hybrid_grid *g;
    const rbe_hybrid_layout *l;
    const void *z;
    void *u;
    rbe_hybrid_forward_f32_fn f32;
    rbe_hybrid_forward_f64_fn f64;
} rbe_hybrid_forward_job;

static void rbe_hybrid_forward_item(void *ctx, int64_t bi) {
    const rbe_hybrid_forward_job *job = (const rbe_hybrid_forward_job *)ctx;
    if (job->f32) job->f32(job->g, job->l, (const float *)job->z, (float *)job->u, bi);
    else job->f64(job->g, job->l, (const double *)job->z, (double *)job->u, bi);
}

/* The forward kernels for a SIMD level (RBE_SIMD_*): AVX2 or better gets the AVX2 variants. */
static inline rbe_hybrid_forward_f32_fn rbe_hybrid_forward_f32(int simd) {
#ifdef RBE_HAVE_X86_SIMD
    if (simd >= RBE_SIMD_AVX2) return rbe_hybrid_forward_row_f32_avx2;
#endif
    (void)simd;
    return rbe_hybrid_forward_row_f32;
}

static inline rbe_hybrid_forward_f64_fn rbe_hybrid_forward_f64(int simd) {
#ifdef RBE_HAVE_X86_SIMD
    if (simd >= RBE_SIMD_AVX2) return rbe_hybrid_forward_row_f64_avx2;
#endif
    (void)simd;
    return rbe_hybrid_forward_row_f64;
}

#endif
