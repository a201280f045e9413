/* Thread-count queries that compile with or without OpenMP, and the per-thread limit. */
#ifndef RBE_THREADS_H
#define RBE_THREADS_H

#ifdef _OPENMP
#include <omp.h>
static inline int rbe_openmp_enabled(void) { return 1; }
static inline int rbe_max_threads(void) { return omp_get_max_threads(); }
static inline int rbe_thread_limit(void) { return omp_get_thread_limit(); }
static inline int rbe_thread_index(void) { return omp_get_thread_num(); }
#else
static inline int rbe_openmp_enabled(void) { return 0; }
static inline int rbe_max_threads(void) { return 1; }
static inline int rbe_thread_limit(void) { return 1 << 30; }
static inline int rbe_thread_index(void) { return 0; }
#endif

/* The calling thread's own limit (0: none), set by rbe.threads(); it takes precedence over the
 * process-wide count, so that threads of a service can each pin theirs (rbe/src/threads.c). */
int rbe_get_local_threads(void);
void rbe_set_local_threads(int n);

/* One seed-layer team at a time: rbe_team_claim() returns 1 if the caller may start a team
 * (and must then call rbe_team_release() after it), 0 if another thread's team is running, in
 * which case the caller computes on its own thread. Several Python threads each starting a team
 * would put threads x teams spinning OpenMP threads on the cores. */
int rbe_team_claim(void);
void rbe_team_release(void);

#endif
