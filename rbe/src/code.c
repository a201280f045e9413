/* Products of code blocks (rbe/code.h): the rotations, the stages of the forward product, the
 * decoding of a group into a dense panel, and the portable product kernels. */
#include <math.h>
#include <string.h>

#include "code_private.h"
#include "kernel_common.h"
#include "rbe/plan.h"
#include "rbe/pool.h"

/* Sylvester's Hadamard matrix (symmetric, unnormalised) on n contiguous values, n a power of
 * two >= 8: the first three levels on each chunk of eight in registers, the others as
 * butterflies of contiguous runs, which compilers vectorise. */
static void rbe_code_hadamard(float *v, int64_t n)
{
    for (int64_t i = 0; i < n; i += 8) {
        float *c = v + i;
        const float a0 = c[0] + c[1], a1 = c[0] - c[1], a2 = c[2] + c[3], a3 = c[2] - c[3];
        const float a4 = c[4] + c[5], a5 = c[4] - c[5], a6 = c[6] + c[7], a7 = c[6] - c[7];
        const float b0 = a0 + a2, b1 = a1 + a3, b2 = a0 - a2, b3 = a1 - a3;
        const float b4 = a4 + a6, b5 = a5 + a7, b6 = a4 - a6, b7 = a5 - a7;
        c[0] = b0 + b4; c[1] = b1 + b5; c[2] = b2 + b6; c[3] = b3 + b7;
        c[4] = b0 - b4; c[5] = b1 - b5; c[6] = b2 - b6; c[7] = b3 - b7;
    }
    for (int64_t h = 8; h < n; h *= 2)
        for (int64_t i = 0; i < n; i += 2 * h)
            for (int64_t j = i; j < i + h; ++j) {
                const float x = v[j], y = v[j + h];
                v[j] = x + y;
                v[j + h] = x - y;
            }
}

/* Columns of the odd factor mixed per chunk of this many values (a stack buffer of
 * RBE_CODE_MAX_ODD chunks). */
#define RBE_CODE_ODD_CHUNK 64

void rbe_code_rotate(const rbe_rotation *r, float *v, int transpose)
{
    const int64_t n = r->pow2, b = r->odd;
    if (b > 1) {      /* v[q n + p] <- sum_q' Q[q, q'] v[q' n + p], over runs of p */
        const float *q = r->odd_matrix;
        float in[RBE_CODE_MAX_ODD * RBE_CODE_ODD_CHUNK];
        for (int64_t p0 = 0; p0 < n; p0 += RBE_CODE_ODD_CHUNK) {
            const int64_t width = n - p0 < RBE_CODE_ODD_CHUNK ? n - p0 : RBE_CODE_ODD_CHUNK;
            for (int64_t j = 0; j < b; ++j)
                memcpy(in + j * RBE_CODE_ODD_CHUNK, v + j * n + p0, (size_t)width * sizeof(float));
            for (int64_t i = 0; i < b; ++i) {
                float *out = v + i * n + p0;
                for (int64_t p = 0; p < width; ++p) out[p] = 0;
                for (int64_t j = 0; j < b; ++j) {
                    const float w = transpose ? q[j * b + i] : q[i * b + j];
                    const float *src = in + j * RBE_CODE_ODD_CHUNK;
                    for (int64_t p = 0; p < width; ++p) out[p] += w * src[p];
                }
            }
        }
    }
    for (int64_t i = 0; i < b; ++i) rbe_code_hadamard(v + i * n, n);
    const float scale = (float)(1.0 / sqrt((double)n));
    for (int64_t j = 0; j < n * b; ++j) v[j] *= scale;
}

/* ---- the portable products --------------------------------------------------------------- */

/* Rows of R a tile row of the group holds: 16, or 0 past the last tile row. */
static int rbe_code_lane_rows(const rbe_code_plan *p, int64_t group, int lane)
{
    return group * RBE_CODE_LANES + lane < p->tile_rows ? RBE_CODE_TILE : 0;
}

void rbe_code_decode_group(const rbe_code_plan *p, int64_t group, int64_t tj0, int64_t tj1,
                           float *out, int64_t ld)
{
    const int64_t bytes = 32 * p->bits;
    for (int lane = 0; lane < RBE_CODE_LANES; ++lane) {
        if (!rbe_code_lane_rows(p, group, lane)) continue;
        for (int64_t tj = tj0; tj < tj1; ++tj) {
            const uint8_t *stream = rbe_code_stream(p, group * RBE_CODE_LANES + lane, tj);
            for (int64_t t = 0; t < RBE_CODE_STEPS; ++t) {
                const uint32_t state = rbe_code_window(stream, bytes, t * p->bits, p->state_bits);
                out[(lane * RBE_CODE_TILE + t / RBE_CODE_TILE) * ld
                    + (tj - tj0) * RBE_CODE_TILE + t % RBE_CODE_TILE] = (float)rbe_code_value(state);
            }
        }
    }
}

/* raw[b ldr + 16 lane + r] = sum over the tile columns tj0 .. tj1 - 1 of the weights of the
 * group's rows times x[b ldx + column], one weight at a time. */
static void rbe_code_products_scalar(const rbe_code_plan *p, int64_t group, int64_t tj0,
                                     int64_t tj1, const float *x, int64_t batch, int64_t ldx,
                                     float *raw, int64_t ldr)
{
    const int64_t bytes = 32 * p->bits;
    for (int lane = 0; lane < RBE_CODE_LANES; ++lane) {
        for (int64_t b = 0; b < batch; ++b)
            for (int r = 0; r < RBE_CODE_TILE; ++r) raw[b * ldr + lane * RBE_CODE_TILE + r] = 0;
        if (!rbe_code_lane_rows(p, group, lane)) continue;
        for (int64_t tj = tj0; tj < tj1; ++tj) {
            const uint8_t *stream = rbe_code_stream(p, group * RBE_CODE_LANES + lane, tj);
            for (int64_t t = 0; t < RBE_CODE_STEPS; ++t) {
                const float v = (float)rbe_code_value(
                    rbe_code_window(stream, bytes, t * p->bits, p->state_bits));
                float *out = raw + lane * RBE_CODE_TILE + t / RBE_CODE_TILE;
                const float *in = x + tj * RBE_CODE_TILE + t % RBE_CODE_TILE;
                for (int64_t b = 0; b < batch; ++b) out[b * ldr] += v * in[b * ldx];
            }
        }
    }
}

void rbe_code_gemv_scalar(const rbe_code_plan *p, int64_t group, int64_t tj0, int64_t tj1,
                          const float *x, float *raw)
{
    rbe_code_products_scalar(p, group, tj0, tj1, x, 1, 0, raw, 0);
}

void rbe_code_gemm_scalar(const rbe_code_plan *p, int64_t group, const float *x, int64_t batch,
                          float *raw, int64_t ldr)
{
    rbe_code_products_scalar(p, group, 0, p->tile_cols, x, batch, p->in_padded, raw, ldr);
}

/* ---- the stages of the forward product ---------------------------------------------------- */

static void rbe_code_inputs_item(void *ctx, int64_t b)
{
    const rbe_code_forward_job *job = (const rbe_code_forward_job *)ctx;
    const rbe_code_plan *p = job->plan;
    float *xr = job->xr + b * p->in_padded;
    if (job->f64) {
        const double *x = (const double *)job->x + b * p->in_features;
        for (int64_t j = 0; j < p->in_features; ++j) xr[j] = p->in_signs[j] * (float)x[j];
    } else {
        const float *x = (const float *)job->x + b * p->in_features;
        for (int64_t j = 0; j < p->in_features; ++j) xr[j] = p->in_signs[j] * x[j];
    }
    for (int64_t j = p->in_features; j < p->in_padded; ++j) xr[j] = 0;
    rbe_code_rotate(&p->in_rotation, xr, 0);
}

static void rbe_code_products_item(void *ctx, int64_t item)
{
    const rbe_code_forward_job *job = (const rbe_code_forward_job *)ctx;
    const rbe_code_plan *p = job->plan;
    const int64_t ldr = p->groups * RBE_CODE_GROUP;
    if (job->batch == 1) {
        const int64_t group = item / job->parts, part = item % job->parts;
        const int64_t tj0 = p->tile_cols * part / job->parts;
        const int64_t tj1 = p->tile_cols * (part + 1) / job->parts;
        job->ops.gemv(p, group, tj0, tj1, job->xr, job->raw + part * ldr + group * RBE_CODE_GROUP);
        return;
    }
    const int64_t chunks = (job->batch + job->chunk - 1) / job->chunk;
    const int64_t group = item / chunks, b0 = item % chunks * job->chunk;
    const int64_t rows = job->batch - b0 < job->chunk ? job->batch - b0 : job->chunk;
    job->ops.gemm(p, group, job->xr + b0 * p->in_padded, rows,
                  job->raw + b0 * ldr + group * RBE_CODE_GROUP, ldr);
}

static void rbe_code_outputs_item(void *ctx, int64_t b)
{
    const rbe_code_forward_job *job = (const rbe_code_forward_job *)ctx;
    const rbe_code_plan *p = job->plan;
    const int64_t ldr = p->groups * RBE_CODE_GROUP;
    const float *raw = job->raw + b * ldr;
    float *yr = job->yr + b * p->out_padded;
    for (int64_t i = 0; i < p->out_padded; ++i) {
        float sum = raw[i];
        for (int64_t part = 1; part < job->parts; ++part) sum += raw[part * job->batch * ldr + i];
        yr[i] = job->factor[i] * sum;
    }
    rbe_code_rotate(&p->out_rotation, yr, 1);
    for (int64_t i = 0; i < p->out_features; ++i) {
        const float y = p->out_signs[i] * yr[i] + (job->bias ? job->bias[i] : 0.0f);
        if (job->f64) ((double *)job->y)[b * p->out_features + i] = y;
        else ((float *)job->y)[b * p->out_features + i] = y;
    }
}

int rbe_code_forward(const rbe_code_forward_job *job, int threads)
{
    const rbe_code_plan *p = job->plan;
    const int64_t nx = job->batch * p->in_features, ny = job->batch * p->out_features;
    const int input = job->f64 ? rbe_plan_check_input_f64((const double *)job->x, nx)
                               : rbe_plan_check_input_f32((const float *)job->x, nx);
    if (input != RBE_PLAN_OK) return input;
    const int64_t chunks = (job->batch + job->chunk - 1) / job->chunk;
    const int64_t counts[3] = {job->batch, p->groups * (job->batch == 1 ? job->parts : chunks),
                               job->batch};
    const rbe_item_fn stages[3] = {rbe_code_inputs_item, rbe_code_products_item,
                                   rbe_code_outputs_item};
    rbe_parallel_stages(3, counts, stages, threads, (void *)job);
    return rbe_plan_check_output(job->y, ny, job->f64);
}
