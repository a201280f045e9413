/* The per-thread limit of rbe/threads.h. */
#include "rbe/threads.h"

#if defined(_MSC_VER)
#define RBE_THREAD_LOCAL __declspec(thread)
#else
#define RBE_THREAD_LOCAL __thread
#endif

static RBE_THREAD_LOCAL int local_threads = 0;

int rbe_get_local_threads(void) { return local_threads; }

void rbe_set_local_threads(int n) { local_threads = n; }
