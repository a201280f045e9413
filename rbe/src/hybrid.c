/* Sparse transform-domain products of hybrid blocks: the kernels of rbe/hybrid.h.
 *
 * Each operation is written once for an element type T by the generator macros below and
 * instantiated for float and double under the names given at the instantiation (the per-weight
 * code is the same for both; C has no other way to say so). The public kernels are explicit
 * definitions at the end of the file.
 */
#include <stdint.h>

#include "rbe/hybrid.h"
#include "kernel_common.h"

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

#define RBE_HYBRID_SPARSE(T, scatter1, scatter, cols_backward, value_grads)                     \
/* dst[r * stride] += v * src[c * stride] for every entry of the block (batch of one). Entries  \
 * outside the block contribute 0 at position 0 (branch-free). */                               \
static inline void scatter1(const rbe_hybrid_block *b, const T *src,                            \
                            T *dst, int64_t stride, int transpose) {                            \
    for (int64_t e = 0; e < b->count; ++e) {                                                    \
        int64_t r, c;                                                                           \
        int ok;                                                                                 \
        rbe_hybrid_split(b, b->index[e], &r, &c, &ok);                                          \
        const T v = ok ? (T)b->values[e] : (T)0;                                                \
        if (transpose) dst[c * stride] += v * src[r * stride];                                  \
        else dst[r * stride] += v * src[c * stride];                                            \
    }                                                                                           \
}                                                                                               \
                                                                                                \
/* The same for a batch: contiguous axpys of length nb. */                                      \
static inline void scatter(const rbe_hybrid_block *b, const T *src,                             \
                           T *dst, int64_t stride, int64_t nb,                                  \
                           int transpose) {                                                     \
    if (nb == 1) {                                                                              \
        scatter1(b, src, dst, stride, transpose);                                               \
        return;                                                                                 \
    }                                                                                           \
    for (int64_t e = 0; e < b->count; ++e) {                                                    \
        int64_t r, c;                                                                           \
        int ok;                                                                                 \
        rbe_hybrid_split(b, b->index[e], &r, &c, &ok);                                          \
        if (!ok) continue;                                                                      \
        const T v = (T)b->values[e];                                                            \
        const T *s = src + (transpose ? r : c) * stride;                                        \
        T *d = dst + (transpose ? c : r) * stride;                                              \
        for (int64_t i = 0; i < nb; ++i) d[i] += v * s[i];                                      \
    }                                                                                           \
}                                                                                               \
                                                                                                \
static inline void cols_backward(const rbe_hybrid_grid *g, const T *a,                          \
                                 T *dz, int64_t bj) {                                           \
    const int64_t nb = g->batch, stride = g->nslots * nb;                                       \
    for (int64_t bi = 0; bi < g->grid_rows; ++bi) {                                             \
        const rbe_hybrid_block b = rbe_hybrid_block_at(g, bi, bj);                              \
        if (b.slot >= g->nslots) continue;                                                      \
        scatter(&b, a + b.row0 * stride + b.slot * nb,                                          \
                                    dz + b.col0 * stride + b.slot * nb, stride, nb, 1);         \
    }                                                                                           \
}                                                                                               \
                                                                                                \
static inline void value_grads(const rbe_hybrid_grid *g, const T *a,                            \
                               const T *z, T *grad, int64_t bi) {                               \
    const int64_t nb = g->batch, stride = g->nslots * nb;                                       \
    for (int64_t bj = 0; bj < g->grid_cols; ++bj) {                                             \
        const rbe_hybrid_block b = rbe_hybrid_block_at(g, bi, bj);                              \
        T *out = grad + g->offsets[bi * g->grid_cols + bj];                                     \
        for (int64_t e = 0; e < b.count; ++e) out[e] = 0;                                       \
        if (b.slot >= g->nslots) continue;                                                      \
        const T *at = a + b.row0 * stride + b.slot * nb;                                        \
        const T *zt = z + b.col0 * stride + b.slot * nb;                                        \
        for (int64_t e = 0; e < b.count; ++e) {                                                 \
            int64_t r, c;                                                                       \
            int ok;                                                                             \
            rbe_hybrid_split(&b, b.index[e], &r, &c, &ok);                                      \
            const T *x = at + r * stride, *y = zt + c * stride;                                 \
            double sum = 0.0;                                                                   \
            for (int64_t i = 0; i < nb; ++i) sum += (double)x[i] * (double)y[i];                \
            out[e] = ok ? (T)sum : (T)0;                                                        \
        }                                                                                       \
    }                                                                                           \
}

RBE_HYBRID_SPARSE(float, scatter1_f32, scatter_f32, cols_backward_f32, value_grads_f32)
RBE_HYBRID_SPARSE(double, scatter1_f64, scatter_f64, cols_backward_f64, value_grads_f64)

/* Forward product of one block row, u[bi] += S z (layout above). One vector: the entries of
 * a block run as four interleaved streams, so that consecutive updates of one output (entries
 * are sorted by row) do not wait for each other, and a power-of-two block width splits
 * indices with shifts (the multiplies of the general split would bound the loop). A batch:
 * one axpy of the batch per entry, which the compiler vectorises (8 floats wide in the AVX2
 * variant). Neither contracts a multiply and add (ISO C), so every variant gives the same
 * sums. Entries outside their block add 0 to the block's first output (branch-free). */
#define RBE_HYBRID_FORWARD(T, term, gemv_block, forward_row)                                    \
/* v * z[c] of entry k, and where it goes (the product is 0 for an entry outside its block). */ \
static inline T term(const rbe_hybrid_block *b, int64_t k, const T *zt,                         \
                     int64_t z_col, int64_t u_row, int shift,                                   \
                     int64_t *at) {                                                             \
    uint32_t i = b->index[k];                                                                   \
    T v = (T)b->values[k];                                                                      \
    const int ok = i < (uint32_t)b->size;                                                       \
    i = ok ? i : 0;                                                                             \
    v = ok ? v : (T)0;                                                                          \
    const uint32_t w = (uint32_t)b->w;                                                          \
    const uint32_t r = shift >= 0 ? i >> shift : (uint32_t)(((uint64_t)i * b->magic) >> 32);    \
    const uint32_t c = shift >= 0 ? i & (w - 1) : i - r * w;                                    \
    *at = r * u_row;                                                                            \
    return v * zt[c * z_col];                                                                   \
}                                                                                               \
                                                                                                \
/* ut[r * u_row] += v * zt[c * z_col] over a block's entries; shift: log2 of a power-of-two     \
 * block width, else -1. */                                                                     \
static inline void gemv_block(const rbe_hybrid_block *b, const T *zt,                           \
                              T *ut, int64_t z_col, int64_t u_row,                              \
                              int shift) {                                                      \
    const int64_t q = b->count / 4;                                                             \
    for (int64_t e = 0; e < q; ++e) {                                                           \
        int64_t at[4];                                                                          \
        T p[4];                                                                                 \
        for (int s = 0; s < 4; ++s)                                                             \
            p[s] = term(b, e + s * q, zt, z_col, u_row, shift, &at[s]);                         \
        for (int s = 0; s < 4; ++s) ut[at[s]] += p[s];                                          \
    }                                                                                           \
    for (int64_t e = 4 * q; e < b->count; ++e) {                                                \
        int64_t at;                                                                             \
        const T p = term(b, e, zt, z_col, u_row, shift, &at);                                   \
        ut[at] += p;                                                                            \
    }                                                                                           \
}                                                                                               \
                                                                                                \
RBE_INLINE void forward_row(const rbe_hybrid_grid *g,                                           \
                            const rbe_hybrid_layout *l, const T *z,                             \
                            T *u, int64_t bi) {                                                 \
    const int64_t nb = g->batch;                                                                \
    for (int64_t bj = 0; bj < g->grid_cols; ++bj) {                                             \
        const rbe_hybrid_block b = rbe_hybrid_block_at(g, bi, bj);                              \
        if (b.slot >= g->nslots) continue;                                                      \
        const int64_t h = b.size / b.w;                                                         \
        const T *zt = z + (l->z_base[bj] + b.slot * b.w * l->z_step[bj]) * nb;                  \
        T *ut = u + (l->u_base[bi] + b.slot * h * l->u_step[bi]) * nb;                          \
        const int64_t z_col = l->z_step[bj] * nb, u_row = l->u_step[bi] * nb;                   \
        int shift = (b.w & (b.w - 1)) == 0 ? 0 : -1;                                            \
        while (shift >= 0 && (INT64_C(1) << shift) < b.w) ++shift;                              \
        if (nb == 1 && z_col == 1 && u_row == 1 && shift == 6) {                                \
            gemv_block(&b, zt, ut, 1, 1, 6);    /* 64 wide: the default */                      \
            continue;                                                                           \
        }                                                                                       \
        if (nb == 1) {                                                                          \
            gemv_block(&b, zt, ut, z_col, u_row, shift);                                        \
            continue;                                                                           \
        }                                                                                       \
        for (int64_t e = 0; e < b.count; ++e) {                                                 \
            int64_t r, c;                                                                       \
            int ok;                                                                             \
            rbe_hybrid_split(&b, b.index[e], &r, &c, &ok);                                      \
            const T v = ok ? (T)b.values[e] : (T)0;                                             \
            const T *src = zt + c * z_col;                                                      \
            T *dst = ut + r * u_row;                                                            \
            for (int64_t i = 0; i < nb; ++i) dst[i] += v * src[i];                              \
        }                                                                                       \
    }                                                                                           \
}

RBE_HYBRID_FORWARD(float, term_f32, gemv_block_f32, forward_row_f32)
RBE_HYBRID_FORWARD(double, term_f64, gemv_block_f64, forward_row_f64)

/* ---- the kernels ---------------------------------------------------------------------- */

void rbe_hybrid_cols_backward_f32(const rbe_hybrid_grid *g, const float *a, float *dz,
                                  int64_t bj)
{
    cols_backward_f32(g, a, dz, bj);
}

void rbe_hybrid_cols_backward_f64(const rbe_hybrid_grid *g, const double *a, double *dz,
                                  int64_t bj)
{
    cols_backward_f64(g, a, dz, bj);
}

void rbe_hybrid_value_grads_f32(const rbe_hybrid_grid *g, const float *a, const float *z,
                                float *grad, int64_t bi)
{
    value_grads_f32(g, a, z, grad, bi);
}

void rbe_hybrid_value_grads_f64(const rbe_hybrid_grid *g, const double *a, const double *z,
                                double *grad, int64_t bi)
{
    value_grads_f64(g, a, z, grad, bi);
}

/* The forward product compiled for the baseline and for AVX2, where the compiler vectorises
 * the batch axpys 8 floats wide. */
void rbe_hybrid_forward_f32_scalar(const rbe_hybrid_grid *g, const rbe_hybrid_layout *l,
                                   const float *z, float *u, int64_t bi)
{
    forward_row_f32(g, l, z, u, bi);
}

void rbe_hybrid_forward_f64_scalar(const rbe_hybrid_grid *g, const rbe_hybrid_layout *l,
                                   const double *z, double *u, int64_t bi)
{
    forward_row_f64(g, l, z, u, bi);
}

#ifdef RBE_HAVE_X86_SIMD
RBE_TARGET_AVX2 void rbe_hybrid_forward_f32_avx2(const rbe_hybrid_grid *g,
                                                 const rbe_hybrid_layout *l, const float *z,
                                                 float *u, int64_t bi)
{
    forward_row_f32(g, l, z, u, bi);
}

RBE_TARGET_AVX2 void rbe_hybrid_forward_f64_avx2(const rbe_hybrid_grid *g,
                                                 const rbe_hybrid_layout *l, const double *z,
                                                 double *u, int64_t bi)
{
    forward_row_f64(g, l, z, u, bi);
}
#endif

void rbe_hybrid_forward_item(void *ctx, int64_t bi) {
    const rbe_hybrid_forward_job *job = (const rbe_hybrid_forward_job *)ctx;
    if (job->f32) job->f32(job->g, job->l, (const float *)job->z, (float *)job->u, bi);
    else job->f64(job->g, job->l, (const double *)job->z, (double *)job->u, bi);
}
