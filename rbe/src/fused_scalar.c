/* Kernels of the fused seed-block layer, scalar: rbe_fused_<op>_<family>_scalar of
 * rbe/fused.h. */
#include <math.h>

#include "rbe/fused.h"
#include "kernel_common.h"
#include "weight_scalar.h"

RBE_INLINE void gemv_row_scalar(int family, const uint64_t *hi, int gc,
                                const rbe_tables *t, int rows, const float *xp,
                                const float *xpr, float *y, float *acc)
{
    (void)xpr;
    const int g = t->g;
    for (int i = 0; i < rows; i++) acc[i] = 0.0f;
    for (int bj = 0; bj < gc; bj++) {
        rbe_seed32 s;
        rbe_seed32_init(hi[bj], family, &s);
        const float *x = xp + (ptrdiff_t)bj * 4 * g;
        for (int i = 0; i < rows; i++) {
            float sum = 0.0f;
            for (int p = 0; p < 4; p++) {
                int state = s.sel[(p - i) & 3];
                ptrdiff_t off = ((ptrdiff_t)i * 4 + p) * g;
                for (int q = 0; q < g; q++)
                    sum += rbe_weight_fast(family, state, 0, &s, t->rho[off + q],
                                           t->sin_phi[off + q], t->cos_phi[off + q], NULL, NULL)
                           * x[p * g + q];
            }
            acc[i] += sum;
        }
    }
    for (int i = 0; i < rows; i++) y[i] = acc[i];
}

RBE_INLINE void panel_row_scalar(int family, const uint64_t *hi, int gc,
                                 const rbe_tables *t, int row0, int rows, float *panel,
                                 ptrdiff_t ld)
{
    const int g = t->g;
    for (int bj = 0; bj < gc; bj++) {
        rbe_seed32 s;
        rbe_seed32_init(hi[bj], family, &s);
        for (int i = row0; i < row0 + rows; i++)
            for (int p = 0; p < 4; p++) {
                int state = s.sel[(p - i) & 3];
                ptrdiff_t off = ((ptrdiff_t)i * 4 + p) * g;
                float *dst = panel + (ptrdiff_t)(i - row0) * ld + ((ptrdiff_t)bj * 4 + p) * g;
                for (int q = 0; q < g; q++)
                    dst[q] = rbe_weight_fast(family, state, 0, &s, t->rho[off + q],
                                             t->sin_phi[off + q], t->cos_phi[off + q], NULL, NULL);
            }
    }
}

RBE_INLINE void backward_block_scalar(int family, uint64_t hi,
                                      const rbe_tables *t, int rows,
                                      const float *G, float *W, float alpha,
                                      float beta, double *stats)
{
    const int g = t->g;
    rbe_seed32 s;
    rbe_seed32_init(hi, family, &s);
    for (int k = 0; k < RBE_FUSED_NSTATS; k++) stats[k] = 0.0;
    for (int i = 0; i < rows; i++)
        for (int p = 0; p < 4; p++) {
            int c = (p - i) & 3, state = s.sel[c];
            double *cs = stats + RBE_FUSED_CLASS + 4 * c;
            ptrdiff_t off = ((ptrdiff_t)i * 4 + p) * g, row = (ptrdiff_t)i * 4 * g + p * g;
            for (int q = 0; q < g; q++) {
                float rho = t->rho[off + q], sp = t->sin_phi[off + q], cp = t->cos_phi[off + q];
                float dr, dth, gv = G[row + q];
                float w = rbe_weight_fast(family, state, 1, &s, rho, sp, cp, &dr, &dth);
                float wp = rbe_weight_fast(family, rbe_pos_state(state), 0, &s, rho, sp, cp,
                                           NULL, NULL);
                float wn = rbe_weight_fast(family, rbe_neg_state(state), 0, &s, rho, sp, cp,
                                           NULL, NULL);
                W[row + q] = w;
                stats[RBE_FUSED_DR] += (double)gv * dr;
                stats[RBE_FUSED_DTH] += (double)gv * dth;
                cs[RBE_FUSED_CUR] += (double)gv * w;
                cs[RBE_FUSED_POS] += (double)gv * (wp - w);
                cs[RBE_FUSED_NEG] += (double)gv * (wn - w);
                cs[RBE_FUSED_ABS] += fabs((double)gv * (alpha * w + beta));
            }
        }
    for (int c = 0; c < RBE_N_CLASSES; c++)
        stats[RBE_FUSED_GW] += stats[RBE_FUSED_CLASS + 4 * c + RBE_FUSED_CUR];
}

/* One input vector: G = dy x^T as a tile, the tile kernel, then dx += W^T dy. */
RBE_INLINE void backward_vec_scalar(int family, uint64_t hi, const rbe_tables *t,
                                    int rows, const float *x, const float *xr,
                                    const float *dy, float *dx, float *scratch,
                                    float alpha, float beta, double *stats)
{
    (void)xr;
    const ptrdiff_t gw = 4 * (ptrdiff_t)t->g;
    float *G = scratch, *W = scratch + (ptrdiff_t)t->h * gw;
    for (int i = 0; i < rows; i++)
        for (ptrdiff_t k = 0; k < gw; k++) G[i * gw + k] = dy[i] * x[k];
    backward_block_scalar(family, hi, t, rows, G, W, alpha, beta, stats);
    for (int i = 0; i < rows; i++)
        for (ptrdiff_t k = 0; k < gw; k++) dx[k] += W[i * gw + k] * dy[i];
}

void rbe_fused_gemv_poly_scalar(const uint64_t *hi, int gc, const rbe_tables *t, int rows,
                                const float *xp, const float *xpr, float *y, float *acc)
{
    gemv_row_scalar(RBE_APPROX_POLY, hi, gc, t, rows, xp, xpr, y, acc);
}

void rbe_fused_panel_poly_scalar(const uint64_t *hi, int gc, const rbe_tables *t, int row0,
                                 int rows, float *panel, ptrdiff_t ld)
{
    panel_row_scalar(RBE_APPROX_POLY, hi, gc, t, row0, rows, panel, ld);
}

void rbe_fused_backward_poly_scalar(uint64_t hi, const rbe_tables *t, int rows, const float *G,
                                    float *W, float alpha, float beta, double *stats)
{
    backward_block_scalar(RBE_APPROX_POLY, hi, t, rows, G, W, alpha, beta, stats);
}

void rbe_fused_backward_vec_poly_scalar(uint64_t hi, const rbe_tables *t, int rows, const float *x,
                                        const float *xr, const float *dy, float *dx, float *scratch,
                                        float alpha, float beta, double *stats)
{
    backward_vec_scalar(RBE_APPROX_POLY, hi, t, rows, x, xr, dy, dx, scratch,
                        alpha, beta, stats);
}

void rbe_fused_gemv_lut_scalar(const uint64_t *hi, int gc, const rbe_tables *t, int rows,
                               const float *xp, const float *xpr, float *y, float *acc)
{
    gemv_row_scalar(RBE_APPROX_LUT, hi, gc, t, rows, xp, xpr, y, acc);
}

void rbe_fused_panel_lut_scalar(const uint64_t *hi, int gc, const rbe_tables *t, int row0,
                                int rows, float *panel, ptrdiff_t ld)
{
    panel_row_scalar(RBE_APPROX_LUT, hi, gc, t, row0, rows, panel, ld);
}

void rbe_fused_backward_lut_scalar(uint64_t hi, const rbe_tables *t, int rows, const float *G,
                                   float *W, float alpha, float beta, double *stats)
{
    backward_block_scalar(RBE_APPROX_LUT, hi, t, rows, G, W, alpha, beta, stats);
}

void rbe_fused_backward_vec_lut_scalar(uint64_t hi, const rbe_tables *t, int rows, const float *x,
                                       const float *xr, const float *dy, float *dx, float *scratch,
                                       float alpha, float beta, double *stats)
{
    backward_vec_scalar(RBE_APPROX_LUT, hi, t, rows, x, xr, dy, dx, scratch,
                        alpha, beta, stats);
}

void rbe_fused_gemv_cordic_scalar(const uint64_t *hi, int gc, const rbe_tables *t, int rows,
                                  const float *xp, const float *xpr, float *y, float *acc)
{
    gemv_row_scalar(RBE_APPROX_CORDIC, hi, gc, t, rows, xp, xpr, y, acc);
}

void rbe_fused_panel_cordic_scalar(const uint64_t *hi, int gc, const rbe_tables *t, int row0,
                                   int rows, float *panel, ptrdiff_t ld)
{
    panel_row_scalar(RBE_APPROX_CORDIC, hi, gc, t, row0, rows, panel, ld);
}

void rbe_fused_backward_cordic_scalar(uint64_t hi, const rbe_tables *t, int rows, const float *G,
                                      float *W, float alpha, float beta, double *stats)
{
    backward_block_scalar(RBE_APPROX_CORDIC, hi, t, rows, G, W, alpha, beta, stats);
}

void rbe_fused_backward_vec_cordic_scalar(uint64_t hi, const rbe_tables *t, int rows,
                                          const float *x, const float *xr, const float *dy,
                                          float *dx, float *scratch, float alpha, float beta,
                                          double *stats)
{
    backward_vec_scalar(RBE_APPROX_CORDIC, hi, t, rows, x, xr, dy, dx, scratch,
                        alpha, beta, stats);
}
