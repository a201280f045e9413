/* A parallel loop that never waits for a thread that has not started.
 *
 * rbe_parallel_for(n, threads, fn, ctx) runs fn(ctx, i) for i = 0 .. n - 1 on the calling thread
 * and on up to threads - 1 helper threads, each item on exactly one thread. Items are claimed
 * one at a time from a shared counter, so the caller works from the start and takes every
 * item no helper has claimed; it then waits only for the items helpers are running. A helper
 * that the OS schedules late (its core held by another process or by another library's
 * spinning threads) finds nothing left and goes back to sleep, instead of holding the call up
 * at a barrier as an OpenMP team does. Idle helpers sleep on a condition variable (no
 * spinning, so rbe is no such neighbour to others).
 *
 * One loop at a time uses the helpers: a call made while another thread's loop runs does its
 * items on its own thread. fn must write disjoint outputs per item, so results do not depend
 * on which thread ran an item. After fork() the child starts without helpers (they are
 * started again on first use). Without POSIX threads (e.g. MSVC) the loop runs serially.
 */
#ifndef RBE_POOL_H
#define RBE_POOL_H

#include <stdint.h>

typedef void (*rbe_item_fn)(void *ctx, int64_t item);

/* fn(ctx, i) for i = 0 .. n - 1 on the calling thread and up to threads - 1 helpers
 * (rbe/src/pool.c). */
void rbe_parallel_for(int64_t n, int threads, rbe_item_fn fn, void *ctx);

/* first(ctx, i) for i < n_first, then second(ctx, i) for i < n_second, as one loop: a thread
 * that claims an item of the second phase first waits (yielding its core) until every item of
 * the first has ended. One wake-up of the helpers serves both phases. */
void rbe_parallel_phases(int64_t n_first, rbe_item_fn first, int64_t n_second,
                         rbe_item_fn second, int threads, void *ctx);

/* The same for any number of stages: fns[s](ctx, i) for i < counts[s], stage after stage. */
void rbe_parallel_stages(int stages, const int64_t *counts, const rbe_item_fn *fns, int threads,
                         void *ctx);

#endif
