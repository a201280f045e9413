/* The per-thread limit and the seed-layer team flag of rbe/threads.h. */
#include "rbe/threads.h"

#if defined(_MSC_VER)
#define RBE_THREAD_LOCAL __declspec(thread)
#else
#define RBE_THREAD_LOCAL __thread
#endif

static RBE_THREAD_LOCAL int local_threads = 0;

int rbe_get_local_threads(void) { return local_threads; }

void rbe_set_local_threads(int n) { local_threads = n; }

/* 1 while a seed-layer OpenMP team runs. Compare-and-swap, so that of several Python threads
 * starting a product at once exactly one gets the team. */
static volatile long team_busy = 0;

#if defined(_MSC_VER)
#include <windows.h>
int rbe_team_claim(void) { return InterlockedCompareExchange(&team_busy, 1, 0) == 0; }
void rbe_team_release(void) { InterlockedExchange(&team_busy, 0); }
#else
int rbe_team_claim(void)
{
    long expected = 0;
    return __atomic_compare_exchange_n(&team_busy, &expected, 1, 0, __ATOMIC_ACQUIRE,
                                       __ATOMIC_RELAXED);
}
void rbe_team_release(void) { __atomic_store_n(&team_busy, 0, __ATOMIC_RELEASE); }
#endif
