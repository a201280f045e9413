/* Products of code blocks (rbe/code.h): the rotations, the stages of the forward product, the
 * decoding of a group into a dense panel, and the portable product kernels. */
#include <math.h>
#include <string.h>

#include "code_private.h"
#include "kernel_common.h"

void rbe_code_rotate(const rbe_rotation *r, float *v, int transpose)
{
    const int64_t n = r->pow2, b = r->odd;
    if (b > 1) {
        const float *q = r->odd_matrix;
        float in[RBE_CODE_MAX_ODD];
        for (int64_t p = 0; p < n; ++p) {
            float *g = v + p * b;
            memcpy(in, g, (size_t)b * sizeof(float));
            for (int64_t i = 0; i < b; ++i) {
                float sum = 0;
                for (int64_t j = 0; j < b; ++j) sum += (transpose ? q[j * b + i] : q[i * b + j]) * in[j];
                g[i] = sum;
            }
        }
    }
    /* Sylvester's Hadamard matrix (symmetric) over the power-of-two index, stride b */
    for (int64_t h = 1; h < n; h *= 2)
        for (int64_t i = 0; i < n; i += 2 * h)
            for (int64_t j = i * b; j < (i + h) * b; ++j) {
                const float x = v[j], y = v[j + h * b];
                v[j] = x + y;
                v[j + h * b] = x - y;
            }
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

void rbe_code_inputs_item(void *ctx, int64_t b)
{
    const rbe_code_forward_job *job = (const rbe_code_forward_job *)ctx;
    const rbe_code_plan *p = job->plan;
    const float *x = job->x + b * p->in_features;
    float *xr = job->xr + b * p->in_padded;
    for (int64_t j = 0; j < p->in_features; ++j) xr[j] = p->in_signs[j] * x[j];
    for (int64_t j = p->in_features; j < p->in_padded; ++j) xr[j] = 0;
    rbe_code_rotate(&p->in_rotation, xr, 0);
}

void rbe_code_products_item(void *ctx, int64_t item)
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

void rbe_code_outputs_item(void *ctx, int64_t b)
{
    const rbe_code_forward_job *job = (const rbe_code_forward_job *)ctx;
    const rbe_code_plan *p = job->plan;
    const int64_t ldr = p->groups * RBE_CODE_GROUP;
    const float *raw = job->raw + b * ldr;
    float *yr = job->yr + b * p->out_padded, *y = job->y + b * p->out_features;
    for (int64_t i = 0; i < p->out_padded; ++i) {
        float sum = raw[i];
        for (int64_t part = 1; part < job->parts; ++part) sum += raw[part * job->batch * ldr + i];
        yr[i] = job->factor[i] * sum;
    }
    rbe_code_rotate(&p->out_rotation, yr, 1);
    for (int64_t i = 0; i < p->out_features; ++i)
        y[i] = p->out_signs[i] * yr[i] + (job->bias ? job->bias[i] : 0.0f);
}
