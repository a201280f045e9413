/* Private helpers shared by the kernel translation units (not part of the C API). */
#ifndef RBE_SRC_KERNEL_COMMON_H
#define RBE_SRC_KERNEL_COMMON_H

/* Per-weight building blocks are forced inline: their callers pass compile-time constants
 * (approximation family, state, gradients or not) that must fold away. */
#if defined(_MSC_VER) && !defined(__clang__)
#define RBE_INLINE static __forceinline
#else
#define RBE_INLINE static inline __attribute__((always_inline))
#endif

/* Runs fn(S, ...) with S the compile-time constant equal to the run-time `state` (0..7), so
 * that the always-inline fn is specialised for that state and its loops carry no branch on
 * it. fn takes the state as its first argument. */
#define RBE_WITH_STATE(state, fn, ...)                                                    \
    do {                                                                                  \
        switch (state) {                                                                  \
        case 0: fn(0, __VA_ARGS__); break;                                                \
        case 1: fn(1, __VA_ARGS__); break;                                                \
        case 2: fn(2, __VA_ARGS__); break;                                                \
        case 3: fn(3, __VA_ARGS__); break;                                                \
        case 4: fn(4, __VA_ARGS__); break;                                                \
        case 5: fn(5, __VA_ARGS__); break;                                                \
        case 6: fn(6, __VA_ARGS__); break;                                                \
        default: fn(7, __VA_ARGS__); break;                                               \
        }                                                                                 \
    } while (0)

#endif
