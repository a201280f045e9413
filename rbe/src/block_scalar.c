/* Fast block kernels, scalar: rbe_block_<family>_scalar of rbe/weight.h. */
#include <string.h>

#include "rbe/weight.h"
#include "kernel_common.h"
#include "weight_scalar.h"

/* Number of columns j < w with j mod 4 == p. */
static inline int group_len(int w, int p) { return p < w ? (w - p + 3) / 4 : 0; }

/* All groups of one class in rows [i0, i0 + rows) with a fixed state, into grouped panel
 * buffers; the inner loop has no branch on the state, so compilers can vectorise it (SSE2,
 * NEON) where the family allows. */
RBE_INLINE void class_scalar(int state, int family, int want_grad, int c, const rbe_seed32 *s,
                             const rbe_tables *t, int i0, int rows, float *pw, float *pr,
                             float *pt)
{
    const int g = t->g;
    for (int k = 0; k < rows; k++) {
        int p = (c + i0 + k) & 3;
        ptrdiff_t src = ((ptrdiff_t)(i0 + k) * 4 + p) * g, dst = ((ptrdiff_t)k * 4 + p) * g;
        for (int q = 0; q < g; q++) {
            float gr = 0.0f, gt = 0.0f;
            pw[dst + q] = rbe_weight_fast(family, state, want_grad, s, t->rho[src + q],
                                          t->sin_phi[src + q], t->cos_phi[src + q], &gr, &gt);
            if (want_grad) { pr[dst + q] = gr; pt[dst + q] = gt; }
        }
    }
}

/* One panel row from the grouped layout [4][g] to natural columns [w]. */
static void ungroup_row(const float *grouped, int g, int w, float *row)
{
    for (int p = 0; p < 4; p++)
        for (int q = 0, n = group_len(w, p); q < n; q++) row[4 * q + p] = grouped[p * g + q];
}

/* One block in natural [h][w] layout, class by class over panels of rows (as the AVX2
 * kernel); dr and dth are written when want_grad. */
RBE_INLINE void block_scalar(int family, int want_grad, const rbe_seed32 *s,
                             const rbe_tables *t, float *W, float *dr, float *dth,
                             float *scratch)
{
    if (s->r_plus_theta <= 0.0f) {   /* b = 0 everywhere (r, rho >= 0): all outputs are 0 */
        size_t bytes = (size_t)t->h * (size_t)t->w * sizeof(float);
        memset(W, 0, bytes);
        if (want_grad) { memset(dr, 0, bytes); memset(dth, 0, bytes); }
        return;
    }
    const ptrdiff_t panel = (ptrdiff_t)RBE_PANEL_ROWS * 4 * t->g;
    float *pw = scratch, *pr = scratch + panel, *pt = scratch + 2 * panel;
    for (int i0 = 0; i0 < t->h; i0 += RBE_PANEL_ROWS) {
        int rows = t->h - i0 < RBE_PANEL_ROWS ? t->h - i0 : RBE_PANEL_ROWS;
        for (int c = 0; c < 4; c++)
            RBE_WITH_STATE(s->sel[c], class_scalar, family, want_grad, c, s, t, i0, rows, pw, pr,
                           pt);
        for (int k = 0; k < rows; k++) {
            ptrdiff_t row = (ptrdiff_t)(i0 + k) * t->w, off = (ptrdiff_t)k * 4 * t->g;
            ungroup_row(pw + off, t->g, t->w, W + row);
            if (want_grad) {
                ungroup_row(pr + off, t->g, t->w, dr + row);
                ungroup_row(pt + off, t->g, t->w, dth + row);
            }
        }
    }
}

/* The scalar path ignores the streaming hint: plain stores are all it has. */

void rbe_block_poly_scalar(const rbe_seed32 *s, const rbe_tables *t, float *W, float *dr,
                           float *dth, float *scratch, int stream)
{
    (void)stream;
    if (dr) block_scalar(RBE_APPROX_POLY, 1, s, t, W, dr, dth, scratch);
    else block_scalar(RBE_APPROX_POLY, 0, s, t, W, NULL, NULL, scratch);
}

void rbe_block_lut_scalar(const rbe_seed32 *s, const rbe_tables *t, float *W, float *dr,
                          float *dth, float *scratch, int stream)
{
    (void)stream;
    if (dr) block_scalar(RBE_APPROX_LUT, 1, s, t, W, dr, dth, scratch);
    else block_scalar(RBE_APPROX_LUT, 0, s, t, W, NULL, NULL, scratch);
}

void rbe_block_cordic_scalar(const rbe_seed32 *s, const rbe_tables *t, float *W, float *dr,
                             float *dth, float *scratch, int stream)
{
    (void)stream;
    if (dr) block_scalar(RBE_APPROX_CORDIC, 1, s, t, W, dr, dth, scratch);
    else block_scalar(RBE_APPROX_CORDIC, 0, s, t, W, NULL, NULL, scratch);
}
