/* The forward product and the per-block sums of the seed-block layer (rbe/fused.h): the
 * drivers around the per-target kernels, which they reach through rbe_fused_ops. */
#include <stddef.h>
#include <stdint.h>

#include "rbe/fused.h"
#include "rbe/threads.h"

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* ---- per-block sums ------------------------------------------------------------------- */

/* sums of W (per class, squared) and of the gradients (when dr != NULL) over rows x cols of
 * an h x w block stored [h][w]; the class of (i, j) is (31 i + j) mod 4 = (j - i) mod 4. */
#define RBE_FUSED_ADD_SUMS(T, name)                                                           \
    static void name(const T *W, const T *dr, const T *dth, int w, int rows, int cols,        \
                     double *sums)                                                            \
    {                                                                                         \
        for (int k = 0; k < RBE_FUSED_NSUMS; k++) sums[k] = 0.0;                              \
        for (int i = 0; i < rows; i++)                                                        \
            for (int j = 0; j < cols; j++) {                                                  \
                const ptrdiff_t at = (ptrdiff_t)i * w + j;                                    \
                const double v = W[at];                                                       \
                sums[RBE_FUSED_SUM_CLASS + ((j - i) & 3)] += v;                               \
                sums[RBE_FUSED_SUM_SQ] += v * v;                                              \
                if (dr != NULL) {                                                             \
                    sums[RBE_FUSED_SUM_DR] += dr[at];                                         \
                    sums[RBE_FUSED_SUM_DTH] += dth[at];                                       \
                }                                                                             \
            }                                                                                 \
    }
RBE_FUSED_ADD_SUMS(float, add_sums_f32)
RBE_FUSED_ADD_SUMS(double, add_sums_f64)

void rbe_fused_block_sums(rbe_block_fn fn, int family, uint64_t hi, const rbe_tables *t,
                          int rows, int cols, int with_grad, float *scratch, double *sums)
{
    const ptrdiff_t hw = (ptrdiff_t)t->h * t->w, n = with_grad ? 3 : 1;
    float *dr = with_grad ? scratch + hw : NULL, *dth = with_grad ? scratch + 2 * hw : NULL;
    rbe_generate_block(fn, family, hi, t, scratch, dr, dth, scratch + n * hw, 0);
    add_sums_f32(scratch, dr, dth, t->w, rows, cols, sums);
}

void rbe_fused_block_sums_precise(uint64_t hi, int h, int w, int rows, int cols, int with_grad,
                                  double *scratch, double *sums)
{
    const ptrdiff_t hw = (ptrdiff_t)h * w;
    double *dr = with_grad ? scratch + hw : NULL, *dth = with_grad ? scratch + 2 * hw : NULL;
    rbe_block_precise(hi, h, w, scratch, dr, dth);
    add_sums_f64(scratch, dr, dth, w, rows, cols, sums);
}

/* ---- the forward product -------------------------------------------------------------- */

void rbe_fused_plan_tiles(rbe_fused_plan *p, int64_t tile_floats)
{
    const int64_t gw = 4 * (int64_t)p->t.g, h = p->t.h, gc = p->grid_cols;
    const int64_t band = h * gw <= tile_floats ? h : max64(8, tile_floats / gw / 8 * 8);
    p->band_rows = min64(band, h);
    p->tile_cols = min64(gc, max64(1, tile_floats / (p->band_rows * gw)));
    p->vec_tile_cols = min64(gc, max64(1, tile_floats / (2 * gw)));
}

/* The work areas of one forward, carved from job->work in this order. */
typedef struct {
    float *xp;          /* (batch, kp) grouped inputs */
    float *xpr;         /* (kp) one vector's grouped input, each block column's slice reversed */
    double *xsum;       /* (batch, grid_cols) sums of each block column's inputs */
    float *yf;          /* (batch, out_features) the float result of a double forward */
    float *own;         /* per thread: per_thread floats */
    int64_t per_thread;
} fused_work;

static int64_t per_thread_floats(const rbe_fused_plan *p, int64_t batch)
{
    const int64_t gw = 4 * (int64_t)p->t.g, h = p->t.h;
    if (batch == 1)     /* scaled input and its reverse, the gemv's sums, a tile's outputs */
        return 2 * p->vec_tile_cols * gw + 8 * h + 2 * (int64_t)p->t.g + h;
    return p->band_rows * p->tile_cols * gw;
}

/* Floats before the doubles of xsum, rounded up to keep them aligned. */
static int64_t float_head(const rbe_fused_plan *p, int64_t batch)
{
    const int64_t n = batch * p->kp + (batch == 1 ? p->kp : 0);
    return n + (n & 1);
}

int64_t rbe_fused_work_floats(const rbe_fused_plan *p, int64_t batch, int f64, int threads)
{
    return float_head(p, batch) + 2 * batch * p->grid_cols
           + (f64 ? batch * p->out_features : 0) + threads * per_thread_floats(p, batch);
}

static fused_work carve(const rbe_fused_forward_job *job)
{
    const rbe_fused_plan *p = job->plan;
    const int64_t nb = job->batch;
    fused_work wk;
    wk.xp = job->work;
    wk.xpr = nb == 1 ? wk.xp + p->kp : NULL;
    wk.xsum = (double *)(job->work + float_head(p, nb));
    wk.yf = job->f64 ? (float *)(wk.xsum + nb * p->grid_cols) : NULL;
    wk.own = (float *)(wk.xsum + nb * p->grid_cols) + (job->f64 ? nb * p->out_features : 0);
    wk.per_thread = per_thread_floats(p, nb);
    return wk;
}

/* Whether a forward adds per-block offsets (beta - c alpha s mean W) to the products. */
static int has_offsets(const rbe_fused_forward_job *job)
{
    return job->plan->centred || job->beta != 0.0f;
}

/* x in grouped order, and each block column's sum where the offsets need it, for input
 * element type T. */
#define RBE_FUSED_GROUP(T, name)                                                              \
    static void name(const rbe_fused_forward_job *job, const fused_work *wk)                  \
    {                                                                                         \
        const rbe_fused_plan *p = job->plan;                                                  \
        const int64_t n = p->in_features, w = p->t.w;                                         \
        for (int64_t b = 0; b < job->batch; b++) {                                            \
            const T *x = (const T *)job->x + b * n;                                           \
            float *xp = wk->xp + b * p->kp;                                                   \
            for (int64_t k = 0; k < p->kp; k++)                                               \
                xp[k] = p->source[k] >= 0 ? (float)x[p->source[k]] : 0.0f;                    \
            for (int64_t bj = 0; bj < p->grid_cols && has_offsets(job); bj++) {               \
                double sum = 0.0;                                                             \
                for (int64_t j = bj * w; j < min64(n, (bj + 1) * w); j++) sum += x[j];        \
                wk->xsum[b * p->grid_cols + bj] = sum;                                        \
            }                                                                                 \
        }                                                                                     \
    }
RBE_FUSED_GROUP(float, group_f32)
RBE_FUSED_GROUP(double, group_f64)

/* alpha s, the factor of block b's generated weights. */
static float block_factor(const rbe_fused_forward_job *job, int64_t b)
{
    return job->scale ? (float)((double)job->scale[b] * job->alpha) : job->alpha;
}

/* beta - c alpha s mean W, the constant of block b's effective weights. */
static double block_offset(const rbe_fused_forward_job *job, int64_t b)
{
    const double factor = job->scale ? (double)job->scale[b] * job->alpha : job->alpha;
    return job->beta - (job->plan->centred ? factor * job->mean[b] : 0.0);
}

/* out[k] = x[k] times the factor of its block, for n block columns of gw floats from block b. */
static void scaled_blocks(const rbe_fused_forward_job *job, int64_t b, int64_t n, int64_t gw,
                          const float *x, float *out)
{
    for (int64_t j = 0; j < n; j++) {
        const float f = block_factor(job, b + j);
        for (int64_t k = j * gw; k < (j + 1) * gw; k++) out[k] = x[k] * f;
    }
}

/* One vector: y[0 .. rows) of block row bi, tile by tile of block columns. */
static void gemv_row(const rbe_fused_forward_job *job, const fused_work *wk, int64_t bi,
                     int rows, float *y, float *own)
{
    const rbe_fused_plan *p = job->plan;
    const int64_t gw = 4 * (int64_t)p->t.g, gc = p->grid_cols, tile = p->vec_tile_cols;
    float *xs = own, *xsr = own + tile * gw, *acc = xsr + tile * gw;
    float *part = acc + 8 * (int64_t)p->t.h + 2 * (int64_t)p->t.g;
    for (int64_t bj = 0; bj < gc; bj += tile) {
        const int64_t n = min64(tile, gc - bj);
        scaled_blocks(job, bi * gc + bj, n, gw, wk->xp + bj * gw, xs);
        scaled_blocks(job, bi * gc + bj, n, gw, wk->xpr + bj * gw, xsr);
        job->ops.gemv(job->hi + bi * gc + bj, (int)n, &p->t, rows, xs, xsr,
                      bj == 0 ? y : part, acc);
        if (bj > 0)
            for (int i = 0; i < rows; i++) y[i] += part[i];
    }
}

/* A batch: rows [0, rows) of block row bi for every input, into y (leading dimension
 * out_features), band by band and tile by tile. */
static void batch_row(const rbe_fused_forward_job *job, const fused_work *wk, int64_t bi,
                      int rows, float *y, float *panel)
{
    const rbe_fused_plan *p = job->plan;
    const int64_t gw = 4 * (int64_t)p->t.g, gc = p->grid_cols;
    char ta = 'T', tb = 'N';
    int nb = (int)job->batch, ldb = (int)p->kp, ldc = (int)p->out_features;
    float one = 1.0f, zero = 0.0f;
    for (int64_t r0 = 0; r0 < rows; r0 += p->band_rows) {
        int nr = (int)min64(p->band_rows, rows - r0);
        for (int64_t bj = 0; bj < gc; bj += p->tile_cols) {
            const int64_t n = min64(p->tile_cols, gc - bj);
            int ld = (int)(n * gw);
            job->ops.panel(job->hi + bi * gc + bj, (int)n, &p->t, (int)r0, nr, panel, ld);
            for (int i = 0; i < nr; i++)
                scaled_blocks(job, bi * gc + bj, n, gw, panel + (int64_t)i * ld,
                              panel + (int64_t)i * ld);
            /* column-major: Y^T[nr x batch] (+)= panel^T^T . Xp^T over this tile's columns */
            job->sgemm(&ta, &tb, &nr, &nb, &ld, &one, panel, &ld, wk->xp + bj * gw, &ldb,
                       bj == 0 ? &zero : &one, y + r0, &ldc);
        }
    }
}

/* y of block row bi from its products: plus the offsets times the block column sums and the
 * bias, in the output's type. */
static void finish_row(const rbe_fused_forward_job *job, const fused_work *wk, int64_t bi,
                       int rows, const float *products)
{
    const rbe_fused_plan *p = job->plan;
    const int64_t gc = p->grid_cols, out = p->out_features, y0 = bi * p->t.h;
    for (int64_t b = 0; b < job->batch; b++) {
        float offset = 0.0f;
        if (has_offsets(job)) {
            double sum = 0.0;
            for (int64_t bj = 0; bj < gc; bj++)
                sum += wk->xsum[b * gc + bj] * block_offset(job, bi * gc + bj);
            offset = (float)sum;
        }
        const float *src = products + b * out + y0;
        for (int i = 0; i < rows; i++) {
            float v = src[i] + offset;
            if (job->bias) v += job->bias[y0 + i];
            if (job->f64) ((double *)job->y)[b * out + y0 + i] = v;
            else ((float *)job->y)[b * out + y0 + i] = v;
        }
    }
}

static void forward_row(const rbe_fused_forward_job *job, const fused_work *wk, int64_t bi,
                        float *own)
{
    const rbe_fused_plan *p = job->plan;
    const int rows = (int)min64(p->t.h, p->out_features - bi * p->t.h);
    float *products = job->f64 ? wk->yf : (float *)job->y;
    if (job->batch == 1) gemv_row(job, wk, bi, rows, products + bi * p->t.h, own);
    else batch_row(job, wk, bi, rows, products + bi * p->t.h, own);
    finish_row(job, wk, bi, rows, products);
}

int rbe_fused_forward(const rbe_fused_forward_job *job, int threads)
{
    const rbe_fused_plan *p = job->plan;
    const int64_t nb = job->batch, gw = 4 * (int64_t)p->t.g;
    const fused_work wk = carve(job);
    const int status = job->f64
        ? rbe_plan_check_input_f64((const double *)job->x, nb * p->in_features)
        : rbe_plan_check_input_f32((const float *)job->x, nb * p->in_features);
    if (status != RBE_PLAN_OK) return status;
    if (job->f64) group_f64(job, &wk);
    else group_f32(job, &wk);
    if (nb == 1)
        for (int64_t k = 0; k < p->kp; k++) wk.xpr[k] = wk.xp[k - k % gw + gw - 1 - k % gw];
    (void)threads;      /* without OpenMP the loop runs on the calling thread */
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic) num_threads(threads)
#endif
    for (int64_t bi = 0; bi < p->grid_rows; bi++)
        forward_row(job, &wk, bi, wk.own + rbe_thread_index() * wk.per_thread);
    return rbe_plan_check_output(job->y, nb * p->out_features, job->f64);
}
