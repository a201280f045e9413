/* Kernels of the fused seed-block layer with AVX2 + FMA: rbe_fused_<op>_<family>_avx2 and
 * rbe_fused_<op>_<family>_avx2_vl of rbe/fused.h (the same source, compiled for 16 and for 32
 * vector registers). */
#include "rbe/fused.h"
#include "kernel_common.h"
#include "weight_avx2.h"

#ifdef RBE_HAVE_X86_SIMD

static inline RBE_TARGET_AVX2 float rbe_hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 0x55));
    return _mm_cvtss_f32(s);
}

#define RBE_LOAD_TABLES(t, off)                                                              \
    _mm256_loadu_ps((t)->rho + (off)), _mm256_loadu_ps((t)->sin_phi + (off)),              \
        _mm256_loadu_ps((t)->cos_phi + (off))

/* The 180-degree rotation (i, j) -> (h-1-i, w-1-j) of a square block keeps rho, turns phi
 * into phi + pi (|sin| and |cos| unchanged) and, when h = w is a multiple of 4, keeps classes 0
 * and 2: their weights at rotated positions are equal, whatever the state. With w = 4g, row
 * h-1-i's group 3-p is row i's group p in reverse lane order, so one evaluation serves two
 * rows. rbe_fused_rotation_pairs says whether a block (of `rows` valid rows) qualifies. */
static inline int rbe_fused_rotation_pairs(const rbe_tables *t, int rows)
{
    return t->h == t->w && t->w == 4 * t->g && rows == t->h;
}

static inline int rbe_fused_rotation_class(int c) { return (c & 1) == 0; }

/* Lanes of v in reverse order. */
static inline RBE_TARGET_AVX2 __m256 rbe_reverse8(__m256 v)
{
    return _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(7, 6, 5, 4, 3, 2, 1, 0));
}

/* How a class pass uses each weight it evaluates (a compile-time constant in every call):
 * PLAIN       acc[i] += row i . x
 * ROTATED     also acc[h-1-i] += row i . xr, xr being the block's input reversed
 *             (xr[k] = x[4g-1-k]): the rotation pairs above
 * TRANSPOSED  also, for lanes q < g/2, acct[p][q] += W[i][p][q] x[h-1-i]: the
 *             anti-transposed positions of rbe_fused_gemv_class8_at */
enum { RBE_GEMV_PLAIN, RBE_GEMV_ROTATED, RBE_GEMV_TRANSPOSED };

/* acc[i] (8 lanes) += class-c weights of row i . x for rows [i0, end), lanes [0, lanes) of
 * each group. One row at a time: the rows are independent, so out-of-order execution
 * overlaps their weight evaluations (long dependency chains) without holding several rows'
 * accumulators in registers. */
RBE_INLINE RBE_TARGET_AVX2 void rbe_fused_gemv_class8(int state, int family, int kind, int c,
                                                      const rbe_seed_v8 *sv,
                                                      const rbe_tables *t, int i0, int end,
                                                      int lanes, const float *x,
                                                      const float *xr, float *acct,
                                                      float *acc)
{
    const int g = t->g, half = g / 2;
    __m256 unused;
    for (int i = i0; i < end; i++) {
        const int p = (c + i) & 3;
        const ptrdiff_t off = ((ptrdiff_t)i * 4 + p) * g;
        const float *xg = x + (ptrdiff_t)p * g;
        __m256 a = _mm256_setzero_ps(), ar = _mm256_setzero_ps(), xs = _mm256_setzero_ps();
        /* column h-1-i is lane g-1-(i>>2) of group 3-(i&3) */
        if (kind == RBE_GEMV_TRANSPOSED)
            xs = _mm256_set1_ps(x[(3 - (i & 3)) * g + g - 1 - (i >> 2)]);
        for (int q0 = 0; q0 < lanes; q0 += 8) {
            __m256 w = rbe_weight8(family, state, 0, sv, RBE_LOAD_TABLES(t, off + q0), &unused,
                                   &unused);
            a = _mm256_fmadd_ps(w, _mm256_loadu_ps(xg + q0), a);
            if (kind == RBE_GEMV_ROTATED)
                ar = _mm256_fmadd_ps(w, _mm256_loadu_ps(xr + (ptrdiff_t)p * g + q0), ar);
            if (kind == RBE_GEMV_TRANSPOSED && q0 < half) {
                float *dst = acct + (ptrdiff_t)p * half + q0;
                _mm256_storeu_ps(dst, _mm256_fmadd_ps(w, xs, _mm256_loadu_ps(dst)));
            }
        }
        float *row = acc + 8 * (ptrdiff_t)i;
        _mm256_storeu_ps(row, _mm256_add_ps(_mm256_loadu_ps(row), a));
        if (kind == RBE_GEMV_ROTATED) {
            float *mirror = acc + 8 * (ptrdiff_t)(t->h - 1 - i);
            _mm256_storeu_ps(mirror, _mm256_add_ps(_mm256_loadu_ps(mirror), ar));
        }
    }
}

/* The anti-transpose (i, j) -> (h-1-j, w-1-i) of a square block keeps rho and every class, so
 * in the states that depend on rho alone (2 to 7) it maps weights onto equal weights. It maps
 * the quadrant {i < h/2, j < w/2} onto {i >= h/2, j >= w/2}: with g a multiple of 16 the
 * quadrants are whole vectors of the grouped layout, so the second one is not evaluated; its
 * contributions y[h-1-j] += W[i][j] x[w-1-i] are gathered per lane in acct (2g floats) and
 * added to the rows at the end. Used for classes 1 and 3, which the rotation does not pair. */
static inline int rbe_fused_transpose_pairs(const rbe_tables *t, int rows, int state)
{
    return state >= 2 && rbe_fused_rotation_pairs(t, rows) && t->g % 16 == 0;
}

RBE_INLINE RBE_TARGET_AVX2 void rbe_fused_gemv_class8_at(int state, int family, int c,
                                                         const rbe_seed_v8 *sv,
                                                         const rbe_tables *t, const float *x,
                                                         float *acct, float *acc)
{
    const int g = t->g, half = g / 2, h = t->h;
    for (int k = 0; k < 4 * half; k++) acct[k] = 0.0f;
    rbe_fused_gemv_class8(state, family, RBE_GEMV_TRANSPOSED, c, sv, t, 0, h / 2, g, x, NULL,
                          acct, acc);
    rbe_fused_gemv_class8(state, family, RBE_GEMV_PLAIN, c, sv, t, h / 2, h, half, x, NULL,
                          NULL, acc);
    for (int p = 0; p < 4; p++)
        for (int q = 0; q < half; q++)
            acc[8 * (ptrdiff_t)(h - 1 - (4 * q + p))] += acct[p * half + q];
}

RBE_INLINE RBE_TARGET_AVX2 void rbe_fused_gemv_row_avx2_body(int family, const uint64_t *hi,
                                                             int gc, const rbe_tables *t,
                                                             int rows, const float *xp,
                                                             const float *xpr, float *y,
                                                             float *acc)
{
    const ptrdiff_t gw = 4 * (ptrdiff_t)t->g;
    const int pairs = xpr != NULL && rbe_fused_rotation_pairs(t, rows);
    float *acct = acc + 8 * (ptrdiff_t)t->h;
    for (int i = 0; i < rows; i++) _mm256_storeu_ps(acc + 8 * (ptrdiff_t)i, _mm256_setzero_ps());
    for (int bj = 0; bj < gc; bj++) {
        rbe_seed32 s;
        rbe_seed_v8 sv;
        rbe_seed32_init(hi[bj], family, &s);
        rbe_seed_v8_init(&s, &sv);
        const float *x = xp + bj * gw;
        for (int c = 0; c < RBE_N_CLASSES; c++) {
            int paired = pairs && rbe_fused_rotation_class(c);
            const float *xr = paired ? xpr + bj * gw : NULL;
            int end = paired ? rows / 2 : rows;
            if (xpr != NULL && !paired && rbe_fused_transpose_pairs(t, rows, s.sel[c])) {
                RBE_WITH_STATE(s.sel[c], rbe_fused_gemv_class8_at, family, c, &sv, t, x, acct,
                               acc);
                continue;
            }
            if (paired)
                RBE_WITH_STATE(s.sel[c], rbe_fused_gemv_class8, family, RBE_GEMV_ROTATED, c, &sv,
                               t, 0, end, t->g, x, xr, NULL, acc);
            else
                RBE_WITH_STATE(s.sel[c], rbe_fused_gemv_class8, family, RBE_GEMV_PLAIN, c, &sv, t,
                               0, end, t->g, x, NULL, NULL, acc);
        }
    }
    for (int i = 0; i < rows; i++) y[i] = rbe_hsum8(_mm256_loadu_ps(acc + 8 * (ptrdiff_t)i));
}

/* Class-c weights of rows [i0, end) into a grouped panel (row i at panel + (i - i0) * ld);
 * with `mirror` (and i0 = 0), row h-1-i's group 3-p receives row i's group p reversed (see
 * above). */
RBE_INLINE RBE_TARGET_AVX2 void rbe_fused_grouped_class8(int state, int family, int c,
                                                         const rbe_seed_v8 *sv,
                                                         const rbe_tables *t, int i0, int end,
                                                         int mirror, float *panel,
                                                         ptrdiff_t ld)
{
    const int g = t->g;
    __m256 unused;
    for (int i = i0; i < end; i++) {
        int p = (c + i) & 3;
        ptrdiff_t off = ((ptrdiff_t)i * 4 + p) * g;
        float *dst = panel + (ptrdiff_t)(i - i0) * ld + (ptrdiff_t)p * g;
        float *rot = panel + (ptrdiff_t)(t->h - 1 - i) * ld + (ptrdiff_t)(4 - p) * g - 8;
        for (int q0 = 0; q0 < g; q0 += 8) {
            __m256 w = rbe_weight8(family, state, 0, sv, RBE_LOAD_TABLES(t, off + q0),
                                   &unused, &unused);
            _mm256_storeu_ps(dst + q0, w);
            if (mirror) _mm256_storeu_ps(rot - q0, rbe_reverse8(w));
        }
    }
}

RBE_INLINE RBE_TARGET_AVX2 void rbe_fused_panel_row_avx2_body(int family, const uint64_t *hi,
                                                              int gc, const rbe_tables *t,
                                                              int row0, int rows, float *panel,
                                                              ptrdiff_t ld)
{
    /* a band of rows has no rotation partner inside it */
    const int pairs = row0 == 0 && rbe_fused_rotation_pairs(t, rows);
    for (int bj = 0; bj < gc; bj++) {
        rbe_seed32 s;
        rbe_seed_v8 sv;
        rbe_seed32_init(hi[bj], family, &s);
        rbe_seed_v8_init(&s, &sv);
        float *dst = panel + (ptrdiff_t)bj * 4 * t->g;
        for (int c = 0; c < RBE_N_CLASSES; c++) {
            int mirror = pairs && rbe_fused_rotation_class(c);
            int end = mirror ? rows / 2 : row0 + rows;
            RBE_WITH_STATE(s.sel[c], rbe_fused_grouped_class8, family, c, &sv, t, row0, end,
                           mirror, dst, ld);
        }
    }
}

/* G of row i, group p, lanes q0..q0+7; when `paired`, plus G at the rotated positions (row
 * h-1-i, group 3-p, reversed lanes), whose weights are the same. gabs gets |G| summed alike. */
static inline RBE_TARGET_AVX2 __m256 rbe_fused_load_g(const float *G, const rbe_tables *t,
                                                      int i, int p, int q0, int paired,
                                                      __m256 *gabs)
{
    const ptrdiff_t g = t->g, gw = 4 * g;
    __m256 a = _mm256_loadu_ps(G + i * gw + p * g + q0);
    if (!paired) {
        *gabs = rbe_abs8(a);
        return a;
    }
    __m256 b = rbe_reverse8(_mm256_loadu_ps(G + (t->h - 1 - i) * gw + (4 - p) * g - 8 - q0));
    *gabs = _mm256_add_ps(rbe_abs8(a), rbe_abs8(b));
    return _mm256_add_ps(a, b);
}

/* Where a backward pass takes G from and puts W (source is a compile-time constant):
 *   RBE_GRAD_TILES   G read from a tile (dY^T X of the block, by sgemm), W written to a tile
 *                    for the dX product by sgemm; both tiles grouped, row stride 4g
 *   RBE_GRAD_VECTOR  one input vector: G = dy x^T formed in registers, and dx += W^T dy
 *                    accumulated in place (rotated rows into dxr, the block's dx reversed) */
enum { RBE_GRAD_TILES, RBE_GRAD_VECTOR };

typedef struct {
    const float *G;
    float *W;
    const float *x, *xr, *dy;   /* the block's input, its reverse, its rows of dy */
    float *dx, *dxr;
} rbe_grad_io;

/* One pass over class c, rows [0, end), in state `state` with its candidates pos and neg
 * (docs/design.md#state-transitions, constants here since the state is):
 * acc = {G dW/dr, G dW/dtheta, G W, |G| |alpha W + beta|, G (W(pos) - W), G (W(neg) - W)}.
 * The three weights share their loads and common terms (and tanh between states 2 and 3).
 * When `paired`, each vector also stands for the rotated positions, whose weights are the
 * same: their G is added, and W goes to them too. */
RBE_INLINE RBE_TARGET_AVX2 void rbe_fused_grad_class8(int state, int family, int source, int c,
                                                      const rbe_seed_v8 *sv,
                                                      const rbe_tables *t, int end, int paired,
                                                      const rbe_grad_io *io, __m256 alpha,
                                                      __m256 beta, __m256 *acc)
{
    const int g = t->g, pos = rbe_pos_state(state), neg = rbe_neg_state(state);
    const __m256 zero = _mm256_setzero_ps();
    for (int i = 0; i < end; i++) {
        int p = (c + i) & 3;
        ptrdiff_t off = ((ptrdiff_t)i * 4 + p) * g, col = (ptrdiff_t)p * g;
        ptrdiff_t row = (ptrdiff_t)i * 4 * g + col;
        float *rot = io->W + (ptrdiff_t)(t->h - 1 - i) * 4 * g + (ptrdiff_t)(4 - p) * g - 8;
        __m256 dy = zero, dy_rot = zero;
        if (source == RBE_GRAD_VECTOR) {
            dy = _mm256_set1_ps(io->dy[i]);
            dy_rot = paired ? _mm256_set1_ps(io->dy[t->h - 1 - i]) : zero;
        }
        for (int q0 = 0; q0 < g; q0 += 8) {
            __m256 dr, dth, unused, gabs, gv;
            if (source == RBE_GRAD_TILES) {
                gv = rbe_fused_load_g(io->G, t, i, p, q0, paired, &gabs);
            } else {
                gv = _mm256_mul_ps(dy, _mm256_loadu_ps(io->x + col + q0));
                gabs = rbe_abs8(gv);
                if (paired) {
                    __m256 gr = _mm256_mul_ps(dy_rot, _mm256_loadu_ps(io->xr + col + q0));
                    gabs = _mm256_add_ps(gabs, rbe_abs8(gr));
                    gv = _mm256_add_ps(gv, gr);
                }
            }
            __m256 rho = _mm256_loadu_ps(t->rho + off + q0);
            if (!_mm256_movemask_ps(_mm256_cmp_ps(rbe_bd_raw8(sv, rho), zero, _CMP_GT_OQ))) {
                /* b = 0 on all lanes: W, its gradients and both candidates are 0 here */
                if (source == RBE_GRAD_TILES) {
                    _mm256_storeu_ps(io->W + row + q0, zero);
                    if (paired) _mm256_storeu_ps(rot - q0, zero);
                }
                acc[3] = _mm256_fmadd_ps(gabs, rbe_abs8(beta), acc[3]);
                continue;
            }
            __m256 sp = _mm256_loadu_ps(t->sin_phi + off + q0);
            __m256 cp = _mm256_loadu_ps(t->cos_phi + off + q0);
            __m256 w = rbe_weight8(family, state, 1, sv, rho, sp, cp, &dr, &dth);
            __m256 wp = rbe_weight8(family, pos, 0, sv, rho, sp, cp, &unused, &unused);
            __m256 wn = rbe_weight8(family, neg, 0, sv, rho, sp, cp, &unused, &unused);
            if (source == RBE_GRAD_TILES) {
                _mm256_storeu_ps(io->W + row + q0, w);
                if (paired) _mm256_storeu_ps(rot - q0, rbe_reverse8(w));
            } else {
                float *dx = io->dx + col + q0, *dxr = io->dxr + col + q0;
                _mm256_storeu_ps(dx, _mm256_fmadd_ps(w, dy, _mm256_loadu_ps(dx)));
                if (paired) _mm256_storeu_ps(dxr, _mm256_fmadd_ps(w, dy_rot, _mm256_loadu_ps(dxr)));
            }
            acc[0] = _mm256_fmadd_ps(gv, dr, acc[0]);
            acc[1] = _mm256_fmadd_ps(gv, dth, acc[1]);
            acc[2] = _mm256_fmadd_ps(gv, w, acc[2]);
            acc[3] = _mm256_fmadd_ps(gabs, rbe_abs8(_mm256_fmadd_ps(alpha, w, beta)), acc[3]);
            acc[4] = _mm256_fmadd_ps(gv, _mm256_sub_ps(wp, w), acc[4]);
            acc[5] = _mm256_fmadd_ps(gv, _mm256_sub_ps(wn, w), acc[5]);
        }
    }
}

RBE_INLINE RBE_TARGET_AVX2 void rbe_fused_backward_avx2_body(int family, int source,
                                                             uint64_t hi, const rbe_tables *t,
                                                             int rows, const rbe_grad_io *io,
                                                             float alpha, float beta,
                                                             double *stats)
{
    rbe_seed32 s;
    rbe_seed_v8 sv;
    rbe_seed32_init(hi, family, &s);
    rbe_seed_v8_init(&s, &sv);
    const int pairs = rbe_fused_rotation_pairs(t, rows);
    for (int k = 0; k < RBE_FUSED_NSTATS; k++) stats[k] = 0.0;
    for (int c = 0; c < RBE_N_CLASSES; c++) {
        __m256 acc[6];
        for (int k = 0; k < 6; k++) acc[k] = _mm256_setzero_ps();
        int paired = pairs && rbe_fused_rotation_class(c);
        int end = paired ? rows / 2 : rows;
        RBE_WITH_STATE(s.sel[c], rbe_fused_grad_class8, family, source, c, &sv, t, end, paired,
                       io, RBE_V8(alpha), RBE_V8(beta), acc);
        double *cs = stats + RBE_FUSED_CLASS + 4 * c;
        stats[RBE_FUSED_DR] += rbe_hsum8(acc[0]);
        stats[RBE_FUSED_DTH] += rbe_hsum8(acc[1]);
        cs[RBE_FUSED_CUR] = rbe_hsum8(acc[2]);
        cs[RBE_FUSED_ABS] = rbe_hsum8(acc[3]);
        cs[RBE_FUSED_POS] = rbe_hsum8(acc[4]);
        cs[RBE_FUSED_NEG] = rbe_hsum8(acc[5]);
        stats[RBE_FUSED_GW] += cs[RBE_FUSED_CUR];
    }
}

RBE_INLINE RBE_TARGET_AVX2 void rbe_fused_backward_block_avx2_body(int family, uint64_t hi,
                                                                   const rbe_tables *t,
                                                                   int rows, const float *G,
                                                                   float *W, float alpha,
                                                                   float beta, double *stats)
{
    rbe_grad_io io = {G, W, NULL, NULL, NULL, NULL, NULL};
    rbe_fused_backward_avx2_body(family, RBE_GRAD_TILES, hi, t, rows, &io, alpha, beta, stats);
}

RBE_INLINE RBE_TARGET_AVX2 void rbe_fused_backward_vec_avx2_body(int family, uint64_t hi,
                                                                 const rbe_tables *t, int rows,
                                                                 const float *x,
                                                                 const float *xr,
                                                                 const float *dy, float *dx,
                                                                 float *scratch, float alpha,
                                                                 float beta, double *stats)
{
    const int gw = 4 * t->g;
    rbe_grad_io io = {NULL, scratch, x, xr, dy, dx, scratch};
    for (int k = 0; k < gw; k++) scratch[k] = 0.0f;
    rbe_fused_backward_avx2_body(family, RBE_GRAD_VECTOR, hi, t, rows, &io, alpha, beta, stats);
    for (int k = 0; k < gw; k++) dx[k] += scratch[gw - 1 - k];
}

RBE_TARGET_AVX2 void rbe_fused_gemv_poly_avx2(const uint64_t *hi, int gc, const rbe_tables *t,
                                              int rows, const float *xp, const float *xpr, float *y,
                                              float *acc)
{
    rbe_fused_gemv_row_avx2_body(RBE_APPROX_POLY, hi, gc, t, rows, xp, xpr, y, acc);
}

RBE_TARGET_AVX2 void rbe_fused_panel_poly_avx2(const uint64_t *hi, int gc, const rbe_tables *t,
                                               int row0, int rows, float *panel, ptrdiff_t ld)
{
    rbe_fused_panel_row_avx2_body(RBE_APPROX_POLY, hi, gc, t, row0, rows, panel, ld);
}

RBE_TARGET_AVX2 void rbe_fused_backward_poly_avx2(uint64_t hi, const rbe_tables *t, int rows,
                                                  const float *G, float *W, float alpha, float beta,
                                                  double *stats)
{
    rbe_fused_backward_block_avx2_body(RBE_APPROX_POLY, hi, t, rows, G, W, alpha, beta, stats);
}

RBE_TARGET_AVX2 void rbe_fused_backward_vec_poly_avx2(uint64_t hi, const rbe_tables *t, int rows,
                                                      const float *x, const float *xr,
                                                      const float *dy, float *dx, float *scratch,
                                                      float alpha, float beta, double *stats)
{
    rbe_fused_backward_vec_avx2_body(RBE_APPROX_POLY, hi, t, rows, x, xr, dy, dx, scratch, alpha,
                                     beta, stats);
}

RBE_TARGET_AVX2_VL void rbe_fused_gemv_poly_avx2_vl(const uint64_t *hi, int gc, const rbe_tables *t,
                                                    int rows, const float *xp, const float *xpr,
                                                    float *y, float *acc)
{
    rbe_fused_gemv_row_avx2_body(RBE_APPROX_POLY, hi, gc, t, rows, xp, xpr, y, acc);
}

RBE_TARGET_AVX2_VL void rbe_fused_panel_poly_avx2_vl(const uint64_t *hi, int gc,
                                                     const rbe_tables *t, int row0, int rows,
                                                     float *panel, ptrdiff_t ld)
{
    rbe_fused_panel_row_avx2_body(RBE_APPROX_POLY, hi, gc, t, row0, rows, panel, ld);
}

RBE_TARGET_AVX2_VL void rbe_fused_backward_poly_avx2_vl(uint64_t hi, const rbe_tables *t, int rows,
                                                        const float *G, float *W, float alpha,
                                                        float beta, double *stats)
{
    rbe_fused_backward_block_avx2_body(RBE_APPROX_POLY, hi, t, rows, G, W, alpha, beta, stats);
}

RBE_TARGET_AVX2_VL void rbe_fused_backward_vec_poly_avx2_vl(uint64_t hi, const rbe_tables *t,
                                                            int rows, const float *x,
                                                            const float *xr, const float *dy,
                                                            float *dx, float *scratch, float alpha,
                                                            float beta, double *stats)
{
    rbe_fused_backward_vec_avx2_body(RBE_APPROX_POLY, hi, t, rows, x, xr, dy, dx, scratch, alpha,
                                     beta, stats);
}

RBE_TARGET_AVX2 void rbe_fused_gemv_lut_avx2(const uint64_t *hi, int gc, const rbe_tables *t,
                                             int rows, const float *xp, const float *xpr, float *y,
                                             float *acc)
{
    rbe_fused_gemv_row_avx2_body(RBE_APPROX_LUT, hi, gc, t, rows, xp, xpr, y, acc);
}

RBE_TARGET_AVX2 void rbe_fused_panel_lut_avx2(const uint64_t *hi, int gc, const rbe_tables *t,
                                              int row0, int rows, float *panel, ptrdiff_t ld)
{
    rbe_fused_panel_row_avx2_body(RBE_APPROX_LUT, hi, gc, t, row0, rows, panel, ld);
}

RBE_TARGET_AVX2 void rbe_fused_backward_lut_avx2(uint64_t hi, const rbe_tables *t, int rows,
                                                 const float *G, float *W, float alpha, float beta,
                                                 double *stats)
{
    rbe_fused_backward_block_avx2_body(RBE_APPROX_LUT, hi, t, rows, G, W, alpha, beta, stats);
}

RBE_TARGET_AVX2 void rbe_fused_backward_vec_lut_avx2(uint64_t hi, const rbe_tables *t, int rows,
                                                     const float *x, const float *xr,
                                                     const float *dy, float *dx, float *scratch,
                                                     float alpha, float beta, double *stats)
{
    rbe_fused_backward_vec_avx2_body(RBE_APPROX_LUT, hi, t, rows, x, xr, dy, dx, scratch, alpha,
                                     beta, stats);
}

RBE_TARGET_AVX2_VL void rbe_fused_gemv_lut_avx2_vl(const uint64_t *hi, int gc, const rbe_tables *t,
                                                   int rows, const float *xp, const float *xpr,
                                                   float *y, float *acc)
{
    rbe_fused_gemv_row_avx2_body(RBE_APPROX_LUT, hi, gc, t, rows, xp, xpr, y, acc);
}

RBE_TARGET_AVX2_VL void rbe_fused_panel_lut_avx2_vl(const uint64_t *hi, int gc, const rbe_tables *t,
                                                    int row0, int rows, float *panel, ptrdiff_t ld)
{
    rbe_fused_panel_row_avx2_body(RBE_APPROX_LUT, hi, gc, t, row0, rows, panel, ld);
}

RBE_TARGET_AVX2_VL void rbe_fused_backward_lut_avx2_vl(uint64_t hi, const rbe_tables *t, int rows,
                                                       const float *G, float *W, float alpha,
                                                       float beta, double *stats)
{
    rbe_fused_backward_block_avx2_body(RBE_APPROX_LUT, hi, t, rows, G, W, alpha, beta, stats);
}

RBE_TARGET_AVX2_VL void rbe_fused_backward_vec_lut_avx2_vl(uint64_t hi, const rbe_tables *t,
                                                           int rows, const float *x,
                                                           const float *xr, const float *dy,
                                                           float *dx, float *scratch, float alpha,
                                                           float beta, double *stats)
{
    rbe_fused_backward_vec_avx2_body(RBE_APPROX_LUT, hi, t, rows, x, xr, dy, dx, scratch, alpha,
                                     beta, stats);
}

RBE_TARGET_AVX2 void rbe_fused_gemv_cordic_avx2(const uint64_t *hi, int gc, const rbe_tables *t,
                                                int rows, const float *xp, const float *xpr,
                                                float *y, float *acc)
{
    rbe_fused_gemv_row_avx2_body(RBE_APPROX_CORDIC, hi, gc, t, rows, xp, xpr, y, acc);
}

RBE_TARGET_AVX2 void rbe_fused_panel_cordic_avx2(const uint64_t *hi, int gc, const rbe_tables *t,
                                                 int row0, int rows, float *panel, ptrdiff_t ld)
{
    rbe_fused_panel_row_avx2_body(RBE_APPROX_CORDIC, hi, gc, t, row0, rows, panel, ld);
}

RBE_TARGET_AVX2 void rbe_fused_backward_cordic_avx2(uint64_t hi, const rbe_tables *t, int rows,
                                                    const float *G, float *W, float alpha,
                                                    float beta, double *stats)
{
    rbe_fused_backward_block_avx2_body(RBE_APPROX_CORDIC, hi, t, rows, G, W, alpha, beta, stats);
}

RBE_TARGET_AVX2 void rbe_fused_backward_vec_cordic_avx2(uint64_t hi, const rbe_tables *t, int rows,
                                                        const float *x, const float *xr,
                                                        const float *dy, float *dx, float *scratch,
                                                        float alpha, float beta, double *stats)
{
    rbe_fused_backward_vec_avx2_body(RBE_APPROX_CORDIC, hi, t, rows, x, xr, dy, dx, scratch, alpha,
                                     beta, stats);
}

RBE_TARGET_AVX2_VL void rbe_fused_gemv_cordic_avx2_vl(const uint64_t *hi, int gc,
                                                      const rbe_tables *t, int rows,
                                                      const float *xp, const float *xpr, float *y,
                                                      float *acc)
{
    rbe_fused_gemv_row_avx2_body(RBE_APPROX_CORDIC, hi, gc, t, rows, xp, xpr, y, acc);
}

RBE_TARGET_AVX2_VL void rbe_fused_panel_cordic_avx2_vl(const uint64_t *hi, int gc,
                                                       const rbe_tables *t, int row0, int rows,
                                                       float *panel, ptrdiff_t ld)
{
    rbe_fused_panel_row_avx2_body(RBE_APPROX_CORDIC, hi, gc, t, row0, rows, panel, ld);
}

RBE_TARGET_AVX2_VL void rbe_fused_backward_cordic_avx2_vl(uint64_t hi, const rbe_tables *t,
                                                          int rows, const float *G, float *W,
                                                          float alpha, float beta, double *stats)
{
    rbe_fused_backward_block_avx2_body(RBE_APPROX_CORDIC, hi, t, rows, G, W, alpha, beta, stats);
}

RBE_TARGET_AVX2_VL void rbe_fused_backward_vec_cordic_avx2_vl(uint64_t hi, const rbe_tables *t,
                                                              int rows, const float *x,
                                                              const float *xr, const float *dy,
                                                              float *dx, float *scratch,
                                                              float alpha, float beta,
                                                              double *stats)
{
    rbe_fused_backward_vec_avx2_body(RBE_APPROX_CORDIC, hi, t, rows, x, xr, dy, dx, scratch, alpha,
                                     beta, stats);
}

#endif
