/* The helper pool of rbe/pool.h. */
#define _POSIX_C_SOURCE 200809L   /* pthreads under -std=c99 */

#include <stdint.h>

#include "rbe/pool.h"

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#include <sched.h>

#define RBE_POOL_MAX 255

typedef struct {
    pthread_mutex_t lock;        /* guards everything below but ``next`` */
    pthread_mutex_t busy;        /* held by the caller whose loop the helpers serve */
    pthread_cond_t wake, idle;
    int started;                 /* helpers running */
    int registered;              /* pthread_atfork handlers installed */
    uint64_t generation;         /* one per loop */
    int open, seats, active;     /* loop accepting helpers; helpers it still takes; running */
    rbe_item_fn fn;
    void *ctx;
    int64_t n;
    int64_t next;                /* next unclaimed item (atomic) */
} rbe_pool;

static rbe_pool rbe_pool_state = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER,
                                  PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER};

static void rbe_pool_run_items(rbe_pool *p, rbe_item_fn fn, void *ctx, int64_t n) {
    for (;;) {
        const int64_t i = __atomic_fetch_add(&p->next, 1, __ATOMIC_RELAXED);
        if (i >= n) return;
        fn(ctx, i);
    }
}

static void *rbe_pool_helper(void *arg) {
    rbe_pool *p = (rbe_pool *)arg;
    pthread_mutex_lock(&p->lock);
    uint64_t seen = p->generation;
    for (;;) {
        while (p->generation == seen) pthread_cond_wait(&p->wake, &p->lock);
        seen = p->generation;
        if (!p->open || p->seats == 0) continue;
        p->seats -= 1;
        p->active += 1;
        rbe_item_fn fn = p->fn;
        void *ctx = p->ctx;
        const int64_t n = p->n;
        pthread_mutex_unlock(&p->lock);
        rbe_pool_run_items(p, fn, ctx, n);
        pthread_mutex_lock(&p->lock);
        if (--p->active == 0) pthread_cond_signal(&p->idle);
    }
    return NULL;
}

/* fork(): hold the pool while forking; the child has no helpers and a free pool. */
static void rbe_pool_prepare(void) {
    pthread_mutex_lock(&rbe_pool_state.busy);
    pthread_mutex_lock(&rbe_pool_state.lock);
}

static void rbe_pool_parent(void) {
    pthread_mutex_unlock(&rbe_pool_state.lock);
    pthread_mutex_unlock(&rbe_pool_state.busy);
}

static void rbe_pool_child(void) {
    rbe_pool *p = &rbe_pool_state;
    p->started = p->open = p->seats = p->active = 0;
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->idle, NULL);
    pthread_mutex_unlock(&p->lock);
    pthread_mutex_unlock(&p->busy);
}

/* Start helpers up to ``count`` (fewer if the OS refuses); called with the lock held. */
static void rbe_pool_grow(rbe_pool *p, int count) {
    if (!p->registered) {
        p->registered = pthread_atfork(rbe_pool_prepare, rbe_pool_parent, rbe_pool_child) == 0;
        if (!p->registered) return;
    }
    while (p->started < count && p->started < RBE_POOL_MAX) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        const int failed = pthread_create(&t, &attr, rbe_pool_helper, p);
        pthread_attr_destroy(&attr);
        if (failed) return;
        p->started += 1;
    }
}

void rbe_parallel_for(int64_t n, int threads, rbe_item_fn fn, void *ctx) {
    rbe_pool *p = &rbe_pool_state;
    int64_t i;
    if (threads <= 1 || n <= 1 || pthread_mutex_trylock(&p->busy) != 0) {
        for (i = 0; i < n; ++i) fn(ctx, i);
        return;
    }
    pthread_mutex_lock(&p->lock);
    rbe_pool_grow(p, threads - 1);
    p->fn = fn;
    p->ctx = ctx;
    p->n = n;
    __atomic_store_n(&p->next, 0, __ATOMIC_RELAXED);
    p->open = 1;
    p->seats = threads - 1 < n - 1 ? threads - 1 : (int)(n - 1);
    p->generation += 1;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    rbe_pool_run_items(p, fn, ctx, n);
    pthread_mutex_lock(&p->lock);
    p->open = 0;
    while (p->active > 0) pthread_cond_wait(&p->idle, &p->lock);
    pthread_mutex_unlock(&p->lock);
    pthread_mutex_unlock(&p->busy);
}

typedef struct {
    int stages;
    const int64_t *counts;
    const rbe_item_fn *fns;
    void *ctx;
    int64_t done;                /* items that have ended (atomic) */
} rbe_stages;

static void rbe_stages_item(void *arg, int64_t i) {
    rbe_stages *job = (rbe_stages *)arg;
    int64_t before = 0;
    int s = 0;
    while (i - before >= job->counts[s]) before += job->counts[s++];
    /* every item of the earlier stages is claimed (items go in order) and ends without
     * waiting for this one */
    while (__atomic_load_n(&job->done, __ATOMIC_ACQUIRE) < before) sched_yield();
    job->fns[s](job->ctx, i - before);
    __atomic_add_fetch(&job->done, 1, __ATOMIC_RELEASE);
}

void rbe_parallel_stages(int stages, const int64_t *counts, const rbe_item_fn *fns, int threads,
                         void *ctx) {
    rbe_stages job = {stages, counts, fns, ctx, 0};
    int64_t total = 0;
    for (int s = 0; s < stages; ++s) total += counts[s];
    rbe_parallel_for(total, threads, rbe_stages_item, &job);
}

void rbe_parallel_phases(int64_t n_first, rbe_item_fn first, int64_t n_second,
                         rbe_item_fn second, int threads, void *ctx) {
    const int64_t counts[2] = {n_first, n_second};
    const rbe_item_fn fns[2] = {first, second};
    rbe_parallel_stages(2, counts, fns, threads, ctx);
}

#else

void rbe_parallel_for(int64_t n, int threads, rbe_item_fn fn, void *ctx) {
    (void)threads;
    for (int64_t i = 0; i < n; ++i) fn(ctx, i);
}

void rbe_parallel_stages(int stages, const int64_t *counts, const rbe_item_fn *fns, int threads,
                         void *ctx) {
    (void)threads;
    for (int s = 0; s < stages; ++s)
        for (int64_t i = 0; i < counts[s]; ++i) fns[s](ctx, i);
}

void rbe_parallel_phases(int64_t n_first, rbe_item_fn first, int64_t n_second,
                         rbe_item_fn second, int threads, void *ctx) {
    const int64_t counts[2] = {n_first, n_second};
    const rbe_item_fn fns[2] = {first, second};
    rbe_parallel_stages(2, counts, fns, threads, ctx);
}

#endif
