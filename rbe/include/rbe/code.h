/* Code blocks: a matrix coded as bit streams of a bitshift trellis between randomised Hadamard
 * rotations, multiplied without decoding it (docs/code.md; the format in docs/design.md).
 *
 * Trellis. The rotated matrix R (out_padded x in_padded) is cut into tiles of 16 x 16. A tile's
 * 256 weights, row-major (step t = 16 r + c), are coded by a circular stream of 256 k bits (k =
 * 2, 3 or 4 bits per weight; stream bit i is bit i % 8 of byte i / 8). The state of step t is the
 * L-bit window of the stream that starts at bit t k (wrapping around: the code is tail-biting),
 * so consecutive states share L - k bits, and its value is computed from the state (1MAD): the
 * sum of the four bytes of s * RBE_CODE_MUL + RBE_CODE_ADD (mod 2^32), an integer in 0 .. 1020
 * whose distribution over the states is close to a Gaussian of mean RBE_CODE_CENTRE and
 * standard deviation RBE_CODE_SPREAD. Weight (r, c) of the tile in row i of R is
 *
 *     R[i, j] = factor[i] * (bytesum(state_t) - RBE_CODE_CENTRE),
 *
 * factor[i] the row's scale over RBE_CODE_SPREAD. The kernels generate the centred integers
 * bytesum - RBE_CODE_CENTRE exactly in float32 and apply the factors to the row sums.
 *
 * Rotations. y = W x is computed as x' = H_in (s_in * pad(x)), y' = R x', y = (s_out * H_out^T
 * y')[:out_features], with H = Q_b kron H_{2^a} (b x b orthonormal Q_b, b odd, none when
 * b = 1; H_{2^a} Sylvester's Hadamard matrix / sqrt(2^a)) and s random signs.
 */
#ifndef RBE_CODE_H
#define RBE_CODE_H

#include <stddef.h>
#include <stdint.h>

#include "rbe/cpu.h"

#define RBE_CODE_TILE 16                      /* tile side */
#define RBE_CODE_STEPS 256                    /* weights per tile, one stream */
#define RBE_CODE_LANES 8                      /* tiles decoded side by side (tile rows) */
#define RBE_CODE_GROUP (RBE_CODE_TILE * RBE_CODE_LANES)   /* rows of R per group: 128 */
#define RBE_CODE_MIN_BITS 2
#define RBE_CODE_MAX_BITS 4
#define RBE_CODE_MAX_STATE_BITS 16
#define RBE_CODE_MUL 34038481u
#define RBE_CODE_ADD 76625530u
#define RBE_CODE_CENTRE 510.0f
#define RBE_CODE_SPREAD 147.800537109375f

/* The integer value (0 .. 1020) of a state. */
static inline uint32_t rbe_code_bytesum(uint32_t state)
{
    const uint32_t x = state * RBE_CODE_MUL + RBE_CODE_ADD;
    return (x & 255u) + ((x >> 8) & 255u) + ((x >> 16) & 255u) + (x >> 24);
}

/* Stream word w (bits 32 w .. 32 w + 31) of a tile's stream, little-endian from the bytes
 * (one load where the CPU is little-endian). */
static inline uint32_t rbe_code_word(const uint8_t *stream, int64_t w)
{
    const uint8_t *b = stream + 4 * w;
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

/* ---- the encoder: Viterbi over the trellis ---------------------------------------------
 *
 * rbe_code_viterbi finds the path (one state per target, consecutive states sharing L - k bits)
 * whose values minimise sum_t (x_t - values[state_t])^2. With overlap < 0 the path is free; with
 * overlap = o in 0 .. 2^(L-k) - 1 it is restricted to paths whose first state's low L - k bits
 * and last state's high L - k bits are both o, which are exactly the paths of a circular stream
 * of steps * k bits. Ties go to the lower state. It writes the states and returns the minimum.
 * The work is O(steps 2^L): per step, the best of the 2^k predecessors of every group of states
 * that share them, then the cost of every state. Implementations per SIMD path (the AVX2 one
 * vectorises over states) give identical results.
 *
 * rbe_code_encode_tile codes one tile: a free Viterbi over a window of 64 steps around the
 * wrap-around picks the overlap, then the restricted Viterbi over the 256 steps gives the
 * stream; it writes the stream (32 k bytes) and the reconstructed values and returns the squared
 * error. */
typedef struct {
    int bits;              /* k */
    int state_bits;        /* L, k < L <= RBE_CODE_MAX_STATE_BITS */
    const float *values;   /* rbe_code_values_size floats: the states' values (padded layout) */
} rbe_trellis;

#define RBE_CODE_WRAP_WINDOW 64     /* steps of the first, free pass of rbe_code_encode_tile */

/* Floats of a trellis's values, and the values themselves, (bytesum - RBE_CODE_CENTRE) /
 * RBE_CODE_SPREAD of each state, in the layout the search reads them in: the states of each
 * value of their top k bits (2^(L-k) of them) RBE_CODE_SLICE_PAD floats apart, so that the 2^k
 * slices read side by side do not compete for the same cache sets. */
size_t rbe_code_values_size(int bits, int state_bits);
void rbe_code_values(int bits, int state_bits, float *values);

/* Bytes of work memory rbe_code_viterbi needs for `steps` steps (64-byte aligned pieces). */
size_t rbe_code_viterbi_work(const rbe_trellis *t, int64_t steps);

typedef double rbe_code_viterbi_kernel(const rbe_trellis *t, const float *x, int64_t steps,
                                       int64_t overlap, uint32_t *states, void *work);
typedef rbe_code_viterbi_kernel *rbe_code_viterbi_fn;
rbe_code_viterbi_kernel rbe_code_viterbi_scalar;
#ifdef RBE_HAVE_X86_SIMD
rbe_code_viterbi_kernel rbe_code_viterbi_avx2;
#endif

double rbe_code_encode_tile(rbe_code_viterbi_fn viterbi, const rbe_trellis *t, const float *x,
                            uint8_t *stream, float *xhat, void *work);

/* ---- rotations ----------------------------------------------------------------------------
 *
 * A rotation side of length n = pow2 * odd: v (n floats) -> H v (forward) or H^T v
 * (transposed) in place, H = H_pow2 kron Q; Q is odd x odd, row-major (NULL when odd == 1),
 * odd <= RBE_CODE_MAX_ODD. */
#define RBE_CODE_MAX_ODD 63
typedef struct {
    int64_t pow2, odd;
    const float *odd_matrix;
} rbe_rotation;

void rbe_code_rotate(const rbe_rotation *r, float *v, int transpose);

/* ---- the forward product ------------------------------------------------------------------
 *
 * Planned once per layer (rbe/_code.pyx builds and checks it): codes are the layer's stored
 * streams, read in place. Groups of RBE_CODE_LANES tile rows are the product's items; a tile
 * row past the last (in the last group) reads a zero stream and its outputs are dropped. */
typedef struct {
    int64_t in_features, out_features;   /* n, m */
    int64_t in_padded, out_padded;       /* n' = 16 tile_cols >= n, m' = 16 tile_rows >= m */
    int64_t tile_rows, tile_cols;
    int64_t groups;                      /* ceil(tile_rows / RBE_CODE_LANES) */
    int bits, state_bits;
    const uint8_t *codes;                /* (tile_rows, tile_cols, 32 bits) */
    const float *in_signs, *out_signs;   /* (in_padded), (out_padded), each +-1 */
    rbe_rotation in_rotation, out_rotation;
} rbe_code_plan;

/* The products of one group of tile rows, one SIMD path:
 *   gemv:  raw[p] = sum_j value(row 128 g + p, column j) x[j] over the tile columns
 *          tj0 .. tj1 - 1, for the group's 128 rows p (x rotated, in_padded floats);
 *   gemm:  raw[b * ldr + p] = the same for the rows b < batch of x (row stride in_padded) over
 *          all tile columns, the group's weights decoded into panels of RBE_CODE_PANEL_COLUMNS
 *          columns (on the stack) and multiplied by every row of x, so that each weight is
 *          decoded once per call whatever the batch. */
#define RBE_CODE_PANEL_COLUMNS 32
#define RBE_CODE_GEMM_ROWS 240                /* rows of x per item at most */
typedef void rbe_code_gemv_kernel(const rbe_code_plan *p, int64_t group, int64_t tj0,
                                  int64_t tj1, const float *x, float *raw);
typedef void rbe_code_gemm_kernel(const rbe_code_plan *p, int64_t group, const float *x,
                                  int64_t batch, float *raw, int64_t ldr);
typedef rbe_code_gemv_kernel *rbe_code_gemv_fn;
typedef rbe_code_gemm_kernel *rbe_code_gemm_fn;

rbe_code_gemv_kernel rbe_code_gemv_scalar;
rbe_code_gemm_kernel rbe_code_gemm_scalar;
#ifdef RBE_HAVE_X86_SIMD
rbe_code_gemv_kernel rbe_code_gemv_avx2;
rbe_code_gemm_kernel rbe_code_gemm_avx2;
rbe_code_gemv_kernel rbe_code_gemv_avx512_vnni;
rbe_code_gemm_kernel rbe_code_gemm_avx512_vnni;
#endif


/* The kernels of one SIMD path. */
typedef struct {
    rbe_code_viterbi_fn viterbi;
    rbe_code_gemv_fn gemv;
    rbe_code_gemm_fn gemm;
} rbe_code_ops;

/* Decode rows [128 g, 128 g + 128) x tile columns [tj0, tj1) as centred values into out
 * (row-major, leading dimension ld); rows past tile_rows are not written. */
void rbe_code_decode_group(const rbe_code_plan *p, int64_t group, int64_t tj0, int64_t tj1,
                           float *out, int64_t ld);

/* One forward product y = W x + b for a batch of float32 or float64 rows (computed in float32,
 * returned in the input's type). */
typedef struct {
    const rbe_code_plan *plan;
    rbe_code_ops ops;
    int64_t batch, parts, chunk;
    int f64;                    /* x and y are double, else float */
    const void *x;              /* (batch, in_features) */
    const float *factor;        /* (out_padded): each row's scale / RBE_CODE_SPREAD */
    const float *bias;          /* (out_features) or NULL */
    float *xr;                  /* (batch, in_padded) */
    float *raw;                 /* (parts, batch, groups * RBE_CODE_GROUP) */
    float *yr;                  /* (batch, out_padded) */
    void *y;                    /* (batch, out_features) */
} rbe_code_forward_job;

/* The product, a status of rbe/plan.h: x checked (finite, float64 within float32's range),
 * then three stages of rbe_parallel_stages on `threads` threads,
 *   inputs:   row b of xr = H_in (s_in * pad(x_b)) (one item per row);
 *   products: raw sums of a group for one part of the columns (one vector: parts ranges of tile
 *             columns per group) or for a chunk of `chunk` rows of the batch;
 *   outputs:  y_b = (s_out * H_out^T (factor * (the sum of the parts of raw_b)))[:m] + bias,
 *             rotated in yr (one item per row),
 * and the result checked (finite). */
int rbe_code_forward(const rbe_code_forward_job *job, int threads);

#endif
