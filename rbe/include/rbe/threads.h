/* Thread-count queries that compile with or without OpenMP, and the per-thread limit. */
#ifndef RBE_THREADS_H
#define RBE_THREADS_H

#ifdef _OPENMP
#include <omp.h>
static inline int rbe_openmp_enabled(void) { return 1; }
static inline int rbe_max_threads(void) { return omp_get_max_threads(); }
static inline int rbe_thread_limit(void) { return omp_get_thread_limit(); }
#else
static inline int rbe_openmp_enabled(void) { return 0; }
static inline int rbe_max_threads(void) { return 1; }
static inline int rbe_thread_limit(void) { return 1 << 30; }
#endif

/* The calling thread's own limit (0: none), set by rbe.threads(); it takes precedence over the
 * process-wide count, so that threads of a service can each pin theirs (rbe/src/threads.c). */
int rbe_get_local_threads(void);
void rbe_set_local_threads(int n);

#endif
