/* The encoder of code blocks (rbe/code.h): Viterbi over the bitshift trellis, and the tail-biting
 * coding of one tile.
 *
 * The recursion runs backwards over the targets (reversed time tau = steps - 1 - t): a state
 * then follows from its predecessor by shifting k new bits in at the bottom, s' = (s << k | b)
 * mod 2^L, so the 2^k predecessors of the states that share m = s' >> k are the states l 2^(L-k)
 * + m, l = 0 .. 2^k - 1: contiguous slices of the cost array, which vectorise. Walking the
 * stream forwards instead (new bits at the top) is the same trellis read the other way round.
 */
#include <math.h>
#include <string.h>

#include "code_private.h"

/* Pieces of the work memory, each starting on a 64-byte boundary. */
static size_t rbe_code_align(size_t bytes) { return (bytes + 63) & ~(size_t)63; }

size_t rbe_code_viterbi_work(const rbe_trellis *t, int64_t steps)
{
    const size_t states = (size_t)1 << t->state_bits, half = states >> t->bits;
    const size_t slots = states + ((size_t)RBE_CODE_SLICE_PAD << t->bits);
    return 2 * rbe_code_align(slots * sizeof(float)) + rbe_code_align(half * sizeof(float))
           + rbe_code_align((size_t)steps * half);
}

void rbe_code_step_scalar(const rbe_trellis *t, const float *cost, float *next, float *best,
                          uint8_t *from, float y)
{
    const int k = t->bits;
    const int64_t half = (int64_t)1 << (t->state_bits - k), groups = (int64_t)1 << k;
    const int64_t stride = half + RBE_CODE_SLICE_PAD;
    for (int64_t m = 0; m < half; ++m) {
        float b = cost[m];
        uint8_t l_best = 0;
        for (int64_t l = 1; l < groups; ++l) {
            const float c = cost[l * stride + m];
            if (c < b) {
                b = c;
                l_best = (uint8_t)l;
            }
        }
        best[m] = b;
        from[m] = l_best;
    }
    for (int64_t l = 0; l < groups; ++l)
        for (int64_t m = 0; m < half; ++m) {
            const int64_t s = l * half + m;
            const float d = y - t->values[s];
            next[l * stride + m] = best[s >> k] + d * d;
        }
}

double rbe_code_viterbi_with(rbe_code_step_fn *step, const rbe_trellis *t, const float *x,
                             int64_t steps, int64_t overlap, uint32_t *states, void *work)
{
    const int k = t->bits, L = t->state_bits;
    const int64_t count = (int64_t)1 << L, half = count >> k;
    const size_t slots = rbe_code_align((size_t)rbe_code_slot(count, k, L) * sizeof(float));
    float *cost = (float *)work;
    float *next = (float *)((char *)cost + slots);
    float *best = (float *)((char *)next + slots);
    uint8_t *from = (uint8_t *)((char *)best + rbe_code_align((size_t)half * sizeof(float)));
    /* tau = 0 is the last target; its state's high L - k bits are the overlap */
    const float y0 = x[steps - 1];
    for (int64_t s = 0; s < count; ++s) {
        const float d = y0 - t->values[s];
        cost[rbe_code_slot(s, k, L)] = overlap < 0 || (s >> k) == overlap ? d * d : INFINITY;
    }
    for (int64_t tau = 1; tau < steps; ++tau) {
        step(t, cost, next, best, from + tau * half, x[steps - 1 - tau]);
        float *swap = cost;
        cost = next;
        next = swap;
    }
    /* the first target's state: its low L - k bits are the overlap */
    int64_t state = -1;
    float total = INFINITY;
    for (int64_t s = 0; s < count; ++s) {
        const float c = cost[rbe_code_slot(s, k, L)];
        if ((overlap < 0 || (s & (half - 1)) == overlap) && (state < 0 || c < total)) {
            state = s;
            total = c;
        }
    }
    for (int64_t tau = steps - 1; tau > 0; --tau) {
        states[steps - 1 - tau] = (uint32_t)state;
        const int64_t m = state >> k;
        state = ((int64_t)from[tau * half + m] << (L - k)) | m;
    }
    states[steps - 1] = (uint32_t)state;
    return total;
}

double rbe_code_viterbi_scalar(const rbe_trellis *t, const float *x, int64_t steps,
                               int64_t overlap, uint32_t *states, void *work)
{
    return rbe_code_viterbi_with(rbe_code_step_scalar, t, x, steps, overlap, states, work);
}

double rbe_code_encode_tile(rbe_code_viterbi_fn viterbi, const rbe_trellis *t, const float *x,
                            uint8_t *stream, float *xhat, void *work)
{
    enum { W = RBE_CODE_WRAP_WINDOW, T = RBE_CODE_STEPS };
    const int k = t->bits;
    const int64_t low = ((int64_t)1 << (t->state_bits - k)) - 1;
    float window[W];
    uint32_t states[T];
    /* the last W/2 targets, then the first W/2: the free path's state at the tile's first step
     * fixes the bits the stream's end shares with its start */
    memcpy(window, x + T - W / 2, W / 2 * sizeof(float));
    memcpy(window + W / 2, x, W / 2 * sizeof(float));
    viterbi(t, window, W, -1, states, work);
    const double error = viterbi(t, x, T, states[W / 2] & low, states, work);
    memset(stream, 0, (size_t)(T * k / 8));
    for (int64_t s = 0; s < T; ++s) {
        const uint32_t bits = states[s] & ((UINT32_C(1) << k) - 1);
        const int64_t at = s * k;
        stream[at >> 3] |= (uint8_t)(bits << (at & 7));
        if ((at & 7) + k > 8) stream[(at >> 3) + 1] |= (uint8_t)(bits >> (8 - (at & 7)));
        xhat[s] = t->values[states[s]];
    }
    return error;
}
