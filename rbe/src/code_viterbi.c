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

size_t rbe_code_values_size(int bits, int state_bits)
{
    return (size_t)rbe_code_value_slot((int64_t)1 << state_bits, bits, state_bits);
}

void rbe_code_values(int bits, int state_bits, float *values)
{
    memset(values, 0, rbe_code_values_size(bits, state_bits) * sizeof(float));
    for (int64_t s = 0; s < (int64_t)1 << state_bits; ++s)
        values[rbe_code_value_slot(s, bits, state_bits)] =
            (float)rbe_code_value((uint32_t)s) / RBE_CODE_SPREAD;
}

size_t rbe_code_viterbi_work(const rbe_trellis *t, int64_t steps)
{
    const size_t half = (size_t)1 << (t->state_bits - t->bits);
    return 2 * rbe_code_align((size_t)rbe_code_cost_size(t->bits, t->state_bits) * sizeof(float))
           + rbe_code_align((size_t)steps * half);
}

void rbe_code_step_scalar(const rbe_trellis *t, const float *prior, float *best, uint8_t *from,
                          float y)
{
    const int k = t->bits, L = t->state_bits;
    const int64_t half = (int64_t)1 << (L - k), groups = (int64_t)1 << k;
    for (int64_t m = 0; m < half; ++m) {
        float b = 0;
        uint8_t l_best = 0;
        for (int64_t l = 0; l < groups; ++l) {
            const int64_t s = l * half + m;
            const float d = y - t->values[rbe_code_value_slot(s, k, L)];
            const float c = prior[rbe_code_cost_slot(s >> k, k, L)] + d * d;
            if (l == 0 || c < b) {
                b = c;
                l_best = (uint8_t)l;
            }
        }
        best[rbe_code_cost_slot(m, k, L)] = b;
        from[m] = l_best;
    }
}

double rbe_code_viterbi_with(rbe_code_step_fn *step, const rbe_trellis *t, const float *x,
                             int64_t steps, int64_t overlap, uint32_t *states, void *work)
{
    const int k = t->bits, L = t->state_bits;
    const int64_t count = (int64_t)1 << L, half = count >> k;
    const int64_t size = rbe_code_cost_size(k, L);
    const size_t slots = rbe_code_align((size_t)size * sizeof(float));
    float *prior = (float *)work, *best = (float *)((char *)work + slots);
    uint8_t *from = (uint8_t *)((char *)best + slots);
    /* tau = 0 is the last target; its state's high L - k bits, s >> k, are the overlap */
    for (int64_t j = 0; j < size; ++j) prior[j] = best[j] = overlap < 0 ? 0.0f : INFINITY;
    if (overlap >= 0) prior[rbe_code_cost_slot(overlap, k, L)] = 0.0f;
    for (int64_t tau = 1; tau < steps; ++tau) {
        step(t, prior, best, from + tau * half, x[steps - tau]);
        float *swap = prior;
        prior = best;
        best = swap;
    }
    /* the first target's state: its low L - k bits are the overlap */
    int64_t state = -1;
    float total = INFINITY;
    for (int64_t s = 0; s < count; ++s) {
        const float d = x[0] - t->values[rbe_code_value_slot(s, k, L)];
        const float c = prior[rbe_code_cost_slot(s >> k, k, L)] + d * d;
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
        xhat[s] = t->values[rbe_code_value_slot(states[s], k, t->state_bits)];
    }
    return error;
}
