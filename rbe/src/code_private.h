/* Private helpers of the code-block kernels (rbe/code.h), shared by code.c, code_viterbi.c and
 * code_avx2.c; not part of the C API. */
#ifndef RBE_SRC_CODE_PRIVATE_H
#define RBE_SRC_CODE_PRIVATE_H

#include <stdint.h>

#include "rbe/code.h"

#if defined(_MSC_VER) && !defined(__clang__)
#define RBE_ALIGN32 __declspec(align(32))
#else
#define RBE_ALIGN32 __attribute__((aligned(32)))
#endif

/* Unrolls the loop over the 32 steps of a pair of tile rows, whose shifts then become
 * compile-time constants. */
#if defined(__clang__)
#define RBE_UNROLL_STEPS _Pragma("unroll")
#elif defined(__GNUC__)
#define RBE_UNROLL_STEPS _Pragma("GCC unroll 32")
#else
#define RBE_UNROLL_STEPS
#endif

/* Padding between the slices of the search's arrays (rbe_code_values_size), in floats. */
#define RBE_CODE_SLICE_PAD 16

/* Where state s's value is in a trellis's values (slices of 2^(L-k) states). */
static inline int64_t rbe_code_value_slot(int64_t s, int bits, int state_bits)
{
    return s + (s >> (state_bits - bits)) * RBE_CODE_SLICE_PAD;
}

/* Where entry j (0 .. 2^(L-k) - 1) of the search's per-group costs is: slices of 2^(L-2k)
 * entries, the ones a step reads side by side, padded as the values are (when they hold whole
 * vectors of eight). */
static inline int64_t rbe_code_cost_slot(int64_t j, int bits, int state_bits)
{
    const int shift = state_bits - 2 * bits;
    return shift >= 3 ? j + (j >> shift) * RBE_CODE_SLICE_PAD : j;
}

/* Floats of a per-group cost array: its slots and eight that a vector load may read past. */
static inline int64_t rbe_code_cost_size(int bits, int state_bits)
{
    return rbe_code_cost_slot((int64_t)1 << (state_bits - bits), bits, state_bits) + 8;
}

/* One step of the Viterbi recursion (rbe_code_viterbi), in the implementation's reversed time:
 * with cost(s) = prior[s >> k] + (y - values[s])^2 the cost of the best path ending in state s
 * at this step, best[m] = min_l cost(l 2^(L-k) + m) over the 2^k states that can precede the
 * states sharing m, and from[m] = the first l that reaches it (prior, best and values at their
 * slots). */
typedef void rbe_code_step_fn(const rbe_trellis *t, const float *prior, float *best,
                              uint8_t *from, float y);

rbe_code_step_fn rbe_code_step_scalar;

/* rbe_code_viterbi with the given step (the rest is shared, so that every SIMD path gives the
 * same path and cost as long as its step computes the same floats). */
double rbe_code_viterbi_with(rbe_code_step_fn *step, const rbe_trellis *t, const float *x,
                             int64_t steps, int64_t overlap, uint32_t *states, void *work);

/* The L-bit window of a tile's stream (stream_bytes bytes, circular) that starts at bit `bit`. */
static inline uint32_t rbe_code_window(const uint8_t *stream, int64_t stream_bytes, int64_t bit,
                                       int state_bits)
{
    const int64_t byte = bit >> 3;
    uint32_t word = 0;
    for (int q = 0; q < 3; ++q) word |= (uint32_t)stream[(byte + q) % stream_bytes] << (8 * q);
    return (word >> (bit & 7)) & ((UINT32_C(1) << state_bits) - 1);
}

/* The centred value (-510 .. 510) of a state. */
static inline int32_t rbe_code_value(uint32_t state)
{
    return (int32_t)rbe_code_bytesum(state) - (int32_t)RBE_CODE_CENTRE;
}

/* The stream of tile (tile_row, tile_col) of a plan. */
static inline const uint8_t *rbe_code_stream(const rbe_code_plan *p, int64_t tile_row,
                                             int64_t tile_col)
{
    return p->codes + (tile_row * p->tile_cols + tile_col) * 32 * p->bits;
}

#endif
