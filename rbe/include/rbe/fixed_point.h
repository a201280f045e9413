/* Packed128 `hi` word: fixed-point fields (docs/design.md#seed-format).
 *
 *   hi[63:44] r_q u20 (Q0.20)   hi[43:20] theta_q i24 (Q1.23)
 *   hi[19:12] detail u8         hi[11:0]  4 x u3 selectors, class c at bits 3c..3c+2
 *
 * Q -> float conversion is exact in both float32 and float64 (at most 24 significant bits).
 */
#ifndef RBE_FIXED_POINT_H
#define RBE_FIXED_POINT_H

#include <stdint.h>

#define RBE_R_SHIFT 44
#define RBE_THETA_SHIFT 20
#define RBE_DETAIL_SHIFT 12
#define RBE_N_CLASSES 4
#define RBE_N_STATES 8

static inline int32_t rbe_r_q(uint64_t hi) { return (int32_t)((hi >> RBE_R_SHIFT) & 0xFFFFFu); }

/* Sign-extend the 24-bit two's-complement field. */
static inline int32_t rbe_theta_q(uint64_t hi)
{
    int32_t t = (int32_t)((hi >> RBE_THETA_SHIFT) & 0xFFFFFFu);
    return (t ^ 0x800000) - 0x800000;
}

static inline int rbe_detail(uint64_t hi) { return (int)((hi >> RBE_DETAIL_SHIFT) & 0xFFu); }

static inline int rbe_selector(uint64_t hi, int c) { return (int)((hi >> (3 * c)) & 7u); }

static inline double rbe_r_of(uint64_t hi) { return rbe_r_q(hi) * (1.0 / 1048576.0); }

static inline double rbe_theta_of(uint64_t hi) { return rbe_theta_q(hi) * (1.0 / 8388608.0); }

static inline double rbe_delta_of(uint64_t hi) { return 1.0 + 0.1 * (rbe_detail(hi) / 255.0 - 0.5); }

#endif
