/* Sparse transform-domain products of hybrid blocks: the kernels of rbe/hybrid.h.
 *
 * Each operation is written once for an element type T by the generator macros below and
 * instantiated for float and double under the names given at the instantiation (the per-weight
 * code is the same for both; C has no other way to say so). The public kernels are explicit
 * definitions at the end of the file.
 */
#include <stdint.h>

#include "rbe/hybrid.h"
#include "rbe/pool.h"
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

#define RBE_HYBRID_SPARSE(T, scatter1, scatter, cols_backward, value_grads)                        \
/* dst[r * stride] += v * src[c * stride] for every entry of the block (batch of one). Entries     \
 * outside the block contribute 0 at position 0 (branch-free). */                                  \
static inline void scatter1(const rbe_hybrid_block *b, const T *src,                               \
                            T *dst, int64_t stride, int transpose) {                               \
    for (int64_t e = 0; e < b->count; ++e) {                                                       \
        int64_t r, c;                                                                              \
        int ok;                                                                                    \
        rbe_hybrid_split(b, b->index[e], &r, &c, &ok);                                             \
        const T v = ok ? (T)b->values[e] : (T)0;                                                   \
        if (transpose) dst[c * stride] += v * src[r * stride];                                     \
        else dst[r * stride] += v * src[c * stride];                                               \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
/* The same for a batch: contiguous axpys of length nb. */                                         \
static inline void scatter(const rbe_hybrid_block *b, const T *src,                                \
                           T *dst, int64_t stride, int64_t nb,                                     \
                           int transpose) {                                                        \
    if (nb == 1) {                                                                                 \
        scatter1(b, src, dst, stride, transpose);                                                  \
        return;                                                                                    \
    }                                                                                              \
    for (int64_t e = 0; e < b->count; ++e) {                                                       \
        int64_t r, c;                                                                              \
        int ok;                                                                                    \
        rbe_hybrid_split(b, b->index[e], &r, &c, &ok);                                             \
        if (!ok) continue;                                                                         \
        const T v = (T)b->values[e];                                                               \
        const T *s = src + (transpose ? r : c) * stride;                                           \
        T *d = dst + (transpose ? c : r) * stride;                                                 \
        for (int64_t i = 0; i < nb; ++i) d[i] += v * s[i];                                         \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
static inline void cols_backward(const rbe_hybrid_grid *g, const T *a,                             \
                                 T *dz, int64_t bj) {                                              \
    const int64_t nb = g->batch, stride = g->nslots * nb;                                          \
    for (int64_t bi = 0; bi < g->grid_rows; ++bi) {                                                \
        const rbe_hybrid_block b = rbe_hybrid_block_at(g, bi, bj);                                 \
        if (b.slot >= g->nslots) continue;                                                         \
        scatter(&b, a + b.row0 * stride + b.slot * nb,                                             \
                                    dz + b.col0 * stride + b.slot * nb, stride, nb, 1);            \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
static inline void value_grads(const rbe_hybrid_grid *g, const T *a,                               \
                               const T *z, T *grad, int64_t bi) {                                  \
    const int64_t nb = g->batch, stride = g->nslots * nb;                                          \
    for (int64_t bj = 0; bj < g->grid_cols; ++bj) {                                                \
        const rbe_hybrid_block b = rbe_hybrid_block_at(g, bi, bj);                                 \
        T *out = grad + g->offsets[bi * g->grid_cols + bj];                                        \
        for (int64_t e = 0; e < b.count; ++e) out[e] = 0;                                          \
        if (b.slot >= g->nslots) continue;                                                         \
        const T *at = a + b.row0 * stride + b.slot * nb;                                           \
        const T *zt = z + b.col0 * stride + b.slot * nb;                                           \
        for (int64_t e = 0; e < b.count; ++e) {                                                    \
            int64_t r, c;                                                                          \
            int ok;                                                                                \
            rbe_hybrid_split(&b, b.index[e], &r, &c, &ok);                                         \
            const T *x = at + r * stride, *y = zt + c * stride;                                    \
            double sum = 0.0;                                                                      \
            for (int64_t i = 0; i < nb; ++i) sum += (double)x[i] * (double)y[i];                   \
            out[e] = ok ? (T)sum : (T)0;                                                           \
        }                                                                                          \
    }                                                                                              \
}

RBE_HYBRID_SPARSE(float, scatter1_f32, scatter_f32, cols_backward_f32, value_grads_f32)
RBE_HYBRID_SPARSE(double, scatter1_f64, scatter_f64, cols_backward_f64, value_grads_f64)

/* Sparse rows of the forward product (rbe_hybrid_plan). One vector: four interleaved partial
 * sums per row, so that consecutive products do not wait for each other; kept scalar, since
 * vectorising it turns the indexed loads into gathers, which are slower. A batch: the row's
 * sums for a tile of the batch stay in registers while its entries stream past (the compiler
 * vectorises the tile, 8 floats wide in the AVX2 variant; GCC's unroll-and-jam would interleave
 * two entries and give up the registers, so it is off there). Neither contracts a multiply and
 * add (ISO C), so every variant gives the same sums. */
#define RBE_ROW_TILE(T) (256 / (int)sizeof(T))     /* eight AVX2 registers */

#if defined(__GNUC__) && !defined(__clang__)
#define RBE_SCALAR_LOOPS __attribute__((optimize("no-tree-vectorize")))
#define RBE_TILE_LOOPS __attribute__((optimize("no-loop-unroll-and-jam")))
#else
#define RBE_SCALAR_LOOPS
#define RBE_TILE_LOOPS
#endif

#define RBE_HYBRID_ROWS(T, row_dots, row_tile, row_part, rows)                                     \
static RBE_SCALAR_LOOPS void row_dots(const rbe_hybrid_plan *p, const float *values,               \
                                      const T *z, T *u, int64_t q0, int64_t q1) {                  \
    const uint32_t *src = p->src, *zrow = p->zrow;                                                 \
    const int64_t *rowptr = p->rowptr;                                                             \
    for (int64_t q = q0; q < q1; ++q) {                                                            \
        const int64_t e1 = rowptr[q + 1];                                                          \
        T s0 = 0, s1 = 0, s2 = 0, s3 = 0;                                                          \
        int64_t e = rowptr[q];                                                                     \
        for (; e + 4 <= e1; e += 4) {                                                              \
            s0 += (T)values[src[e]] * z[zrow[e]];                                                  \
            s1 += (T)values[src[e + 1]] * z[zrow[e + 1]];                                          \
            s2 += (T)values[src[e + 2]] * z[zrow[e + 2]];                                          \
            s3 += (T)values[src[e + 3]] * z[zrow[e + 3]];                                          \
        }                                                                                          \
        for (; e < e1; ++e) s0 += (T)values[src[e]] * z[zrow[e]];                                  \
        u[q] = (s0 + s1) + (s2 + s3);                                                              \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
/* out[i] = sum_e values[src[e]] * z[zrow[e] * nb + i0 + i] for a whole tile, its sums in          \
 * registers; row_part does the batch's last, partial tile. */                                     \
RBE_INLINE void row_tile(const rbe_hybrid_plan *p, const float *values, const T *z, T *out,        \
                         int64_t nb, int64_t i0, int64_t e0, int64_t e1) {                         \
    T acc[RBE_ROW_TILE(T)];                                                                        \
    for (int i = 0; i < RBE_ROW_TILE(T); ++i) acc[i] = 0;                                          \
    for (int64_t e = e0; e < e1; ++e) {                                                            \
        const T v = (T)values[p->src[e]];                                                          \
        const T *zr = z + (int64_t)p->zrow[e] * nb + i0;                                           \
        for (int i = 0; i < RBE_ROW_TILE(T); ++i) acc[i] += v * zr[i];                             \
    }                                                                                              \
    for (int i = 0; i < RBE_ROW_TILE(T); ++i) out[i] = acc[i];                                     \
}                                                                                                  \
                                                                                                   \
static void row_part(const rbe_hybrid_plan *p, const float *values, const T *z, T *out,            \
                     int64_t nb, int64_t i0, int64_t e0, int64_t e1) {                             \
    for (int64_t i = i0; i < nb; ++i) out[i - i0] = 0;                                             \
    for (int64_t e = e0; e < e1; ++e) {                                                            \
        const T v = (T)values[p->src[e]];                                                          \
        const T *zr = z + (int64_t)p->zrow[e] * nb;                                                \
        for (int64_t i = i0; i < nb; ++i) out[i - i0] += v * zr[i];                                \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
RBE_INLINE void rows(const rbe_hybrid_plan *p, const float *values, const T *z, T *u,              \
                     int64_t nb, int64_t q0, int64_t q1) {                                         \
    if (nb == 1) {                                                                                 \
        row_dots(p, values, z, u, q0, q1);                                                         \
        return;                                                                                    \
    }                                                                                              \
    for (int64_t q = q0; q < q1; ++q) {                                                            \
        const int64_t e0 = p->rowptr[q], e1 = p->rowptr[q + 1];                                    \
        T *out = u + q * nb;                                                                       \
        int64_t i0 = 0;                                                                            \
        for (; i0 + RBE_ROW_TILE(T) <= nb; i0 += RBE_ROW_TILE(T))                                  \
            row_tile(p, values, z, out + i0, nb, i0, e0, e1);                                      \
        if (i0 < nb) row_part(p, values, z, out + i0, nb, i0, e0, e1);                             \
    }                                                                                              \
}

RBE_HYBRID_ROWS(float, row_dots_f32, row_tile_f32, row_part_f32, sparse_rows_f32)
RBE_HYBRID_ROWS(double, row_dots_f64, row_tile_f64, row_part_f64, sparse_rows_f64)

/* One forward product as its items see it: the job, and the layer's float32 parameters in
 * the compute type (the job's own for float32, converted copies for float64). */
typedef struct {
    rbe_hybrid_forward_job job;
    const void *coef, *factor_in, *factor_out;
} rbe_hybrid_run;

/* The phases of the forward product (rbe_hybrid_plan) for element type T. gemm computes the
 * column-major C (m x n) = op(A) op(B) (+ C with `accumulate`) in pieces of at most
 * RBE_SERIAL_BLAS_WORK multiply-adds: pieces of C's columns, and of the inner dimension
 * where one column alone is more. */
#define RBE_HYBRID_PHASES(T, gemm_fn, gemm, columns, rows_phase, job_gemm, job_rows)               \
static void gemm(gemm_fn *blas, char ta, char tb, int64_t m, int64_t n, int64_t k, const T *a,     \
                 int64_t lda, const T *b, int64_t ldb, int accumulate, T *c, int64_t ldc) {        \
    int64_t kc = m > 0 ? RBE_SERIAL_BLAS_WORK / m : k;                                             \
    kc = kc < 1 ? 1 : kc > k ? k : kc;                                                             \
    int64_t step = m * kc > 0 ? RBE_SERIAL_BLAS_WORK / (m * kc) : n;                               \
    step = step < 1 ? 1 : step;                                                                    \
    T one = 1, zero = 0;                                                                           \
    int im = (int)m, ilda = (int)lda, ildb = (int)ldb, ildc = (int)ldc;                            \
    for (int64_t k0 = 0; k0 < k; k0 += kc) {                                                       \
        int ik = (int)(k - k0 < kc ? k - k0 : kc);                                                 \
        T *ak = (T *)a + (ta == 'N' ? k0 * lda : k0);                                              \
        T *beta = accumulate || k0 > 0 ? &one : &zero;                                             \
        for (int64_t j = 0; j < n; j += step) {                                                    \
            int in = (int)(n - j < step ? n - j : step);                                           \
            T *bj = (T *)b + (tb == 'N' ? k0 + j * ldb : j + k0 * ldb);                            \
            blas(&ta, &tb, &im, &in, &ik, &one, ak, &ilda, bj, &ildb, beta, c + j * ldc, &ildc);   \
        }                                                                                          \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
/* z of a run of block columns: one GEMM for one vector (Z = X M^T over the run), one per          \
 * block column for a batch (Z_j = M X_j^T, batch contiguous); the item after the runs: the        \
 * low-rank projections p = x F_in (P^T = F_in^T X^T). */                                          \
static void columns(const rbe_hybrid_run *run, int64_t item) {                                     \
    const rbe_hybrid_forward_job *job = &run->job;                                                 \
    const rbe_hybrid_plan *p = job->plan;                                                          \
    const int64_t nb = job->batch;                                                                 \
    const T *x = (const T *)job->x;                                                                \
    T *z = (T *)job->z;                                                                            \
    if (item == job->n_col_runs) {                                                                 \
        gemm(job->job_gemm, 'N', 'N', job->rank, nb, p->in_features, (const T *)run->factor_in,    \
             job->rank, x, p->in_features, 0, (T *)job->projections, job->rank);                   \
        return;                                                                                    \
    }                                                                                              \
    const int64_t j1 = job->col_runs[item + 1];                                                    \
    for (int64_t j = job->col_runs[item]; j < j1; ++j) {                                           \
        const int64_t cls = p->col_class[j], n = p->col_n[cls], zw = p->col_zw[cls];               \
        const T *m = (const T *)p->col_matrix[cls];                                                \
        if (nb == 1) {                                                                             \
            gemm(job->job_gemm, 'T', 'N', zw, j1 - j, n, m, n, x + p->col_x0[j], n, 0,             \
                 z + p->col_z0[j], zw);                                                            \
            return;                                                                                \
        }                                                                                          \
        gemm(job->job_gemm, 'T', 'N', nb, zw, n, x + p->col_x0[j], p->in_features, m, n, 0,        \
             z + p->col_z0[j] * nb, nb);                                                           \
    }                                                                                              \
}                                                                                                  \
                                                                                                   \
/* y of a run of block rows: sparse rows, basis sums (C_t^T P_t per term), outputs y_i = M u_i     \
 * (one GEMM over the run for one vector), bias, low-rank term (Y^T += F_out P^T). */              \
static void rows_phase(const rbe_hybrid_run *run, int64_t item) {                                  \
    const rbe_hybrid_forward_job *job = &run->job;                                                 \
    const rbe_hybrid_plan *p = job->plan;                                                          \
    const int64_t nb = job->batch, i0 = job->row_runs[item], i1 = job->row_runs[item + 1];         \
    const T *z = (const T *)job->z, *coef = (const T *)run->coef;                                  \
    T *u = (T *)job->u, *y = (T *)job->y;                                                          \
    const int64_t last = p->row_class[i1 - 1];                                                     \
    for (int64_t i = i0; i < i1; ++i) {                                                            \
        const int64_t cls = p->row_class[i], q = p->row_u0[i], sparse = p->row_sparse[cls];        \
        job->job_rows(p, job->values, z, u, nb, q, q + sparse);                                    \
        for (int64_t k = (q + sparse) * nb; k < (q + p->row_uw[cls]) * nb; ++k) u[k] = 0;          \
        for (int64_t t = p->row_terms[i]; t < p->row_terms[i + 1]; ++t) {                          \
            const int64_t j = p->term_col[t], r = p->term_rank[t];                                 \
            gemm(job->job_gemm, 'N', 'T', r * nb, 8, p->term_count[t],                             \
                 z + (p->col_z0[j] + p->term_proj[t]) * nb, p->col_zw[p->col_class[j]] * nb,       \
                 coef + (i * p->ncols + j) * 8, 8, 0, u + (q + p->term_sums[t]) * nb, r * nb);     \
        }                                                                                          \
    }                                                                                              \
    for (int64_t i = i0; i < i1; ++i) {                                                            \
        const int64_t cls = p->row_class[i], h = p->row_h[cls], uw = p->row_uw[cls];               \
        const T *m = (const T *)p->row_matrix[cls];                                                \
        if (nb == 1) {                                                                             \
            gemm(job->job_gemm, 'T', 'N', h, i1 - i, uw, m, uw, u + p->row_u0[i], uw, 0,           \
                 y + p->row_y0[i], h);                                                             \
            break;                                                                                 \
        }                                                                                          \
        gemm(job->job_gemm, 'T', 'T', h, nb, uw, m, uw, u + p->row_u0[i] * nb, nb, 0,              \
             y + p->row_y0[i], p->out_features);                                                   \
    }                                                                                              \
    const int64_t y0 = p->row_y0[i0], y1 = p->row_y0[i1 - 1] + p->row_h[last];                     \
    if (job->bias != NULL)                                                                         \
        for (int64_t b = 0; b < nb; ++b)                                                           \
            for (int64_t o = y0; o < y1; ++o) y[b * p->out_features + o] += (T)job->bias[o];       \
    if (job->rank > 0)                                                                             \
        gemm(job->job_gemm, 'T', 'N', y1 - y0, nb, job->rank,                                      \
             (const T *)run->factor_out + y0 * job->rank, job->rank,                               \
             (const T *)job->projections, job->rank, 1, y + y0, p->out_features);                  \
}

RBE_HYBRID_PHASES(float, rbe_sgemm_fn, gemm_f32, columns_f32, rows_phase_f32, sgemm, rows_f32)
RBE_HYBRID_PHASES(double, rbe_dgemm_fn, gemm_f64, columns_f64, rows_phase_f64, dgemm, rows_f64)

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

/* The sparse rows compiled for the baseline and for AVX2, where the compiler vectorises the
 * batch tiles 8 floats wide. */
RBE_TILE_LOOPS void rbe_hybrid_rows_f32_scalar(const rbe_hybrid_plan *p, const float *values,
                                               const float *z, float *u, int64_t batch,
                                               int64_t q0, int64_t q1)
{
    sparse_rows_f32(p, values, z, u, batch, q0, q1);
}

RBE_TILE_LOOPS void rbe_hybrid_rows_f64_scalar(const rbe_hybrid_plan *p, const float *values,
                                               const double *z, double *u, int64_t batch,
                                               int64_t q0, int64_t q1)
{
    sparse_rows_f64(p, values, z, u, batch, q0, q1);
}

#ifdef RBE_HAVE_X86_SIMD
RBE_TARGET_AVX2 RBE_TILE_LOOPS void rbe_hybrid_rows_f32_avx2(const rbe_hybrid_plan *p,
                                                             const float *values,
                                                             const float *z, float *u,
                                                             int64_t batch, int64_t q0,
                                                             int64_t q1)
{
    sparse_rows_f32(p, values, z, u, batch, q0, q1);
}

RBE_TARGET_AVX2 RBE_TILE_LOOPS void rbe_hybrid_rows_f64_avx2(const rbe_hybrid_plan *p,
                                                             const float *values,
                                                             const double *z, double *u,
                                                             int64_t batch, int64_t q0,
                                                             int64_t q1)
{
    sparse_rows_f64(p, values, z, u, batch, q0, q1);
}
#endif

static void columns_item(void *ctx, int64_t item) {
    const rbe_hybrid_run *run = (const rbe_hybrid_run *)ctx;
    if (run->job.sgemm) columns_f32(run, item);
    else columns_f64(run, item);
}

static void rows_item(void *ctx, int64_t item) {
    const rbe_hybrid_run *run = (const rbe_hybrid_run *)ctx;
    if (run->job.sgemm) rows_phase_f32(run, item);
    else rows_phase_f64(run, item);
}

/* a[0 .. n) as doubles into out; returns the end of out. */
static double *widened(const float *a, int64_t n, double *out) {
    for (int64_t i = 0; i < n; ++i) out[i] = a[i];
    return out + n;
}

int rbe_hybrid_forward(const rbe_hybrid_forward_job *job, int threads) {
    const rbe_hybrid_plan *p = job->plan;
    const int f64 = job->sgemm == NULL;
    const int64_t nx = job->batch * p->in_features;
    const int status = f64 ? rbe_plan_check_input_f64((const double *)job->x, nx)
                           : rbe_plan_check_input_f32((const float *)job->x, nx);
    if (status != RBE_PLAN_OK) return status;
    rbe_hybrid_run run = {*job, job->coef, job->factor_in, job->factor_out};
    if (f64) {
        double *at = (double *)job->converted;
        run.coef = at;
        at = widened(job->coef, job->n_coef, at);
        run.factor_in = at;
        at = widened(job->factor_in, p->in_features * job->rank, at);
        run.factor_out = at;
        widened(job->factor_out, p->out_features * job->rank, at);
    }
    rbe_parallel_phases(job->n_col_runs + (job->rank > 0), columns_item, job->n_row_runs,
                        rows_item, threads, &run);
    return rbe_plan_check_output(job->y, job->batch * p->out_features, f64);
}
