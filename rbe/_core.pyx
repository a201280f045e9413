# cython: language_level=3
"""Typed entry points over the C kernels in rbe/include/rbe.

Arguments are validated by the Python callers (rbe.kernel, rbe.reference, ...) and again here
for sizes, before any pointer is touched; every loop runs without the GIL.
"""
cimport cython
from cython.parallel cimport prange
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t

import numpy as np
cimport numpy as cnp

cnp.import_array()

cdef extern from "rbe/threads.h":
    int rbe_openmp_enabled() nogil
    int rbe_max_threads() nogil

cdef int _num_threads = 0


def openmp_enabled():
    """True when the extension was built with OpenMP."""
    return bool(rbe_openmp_enabled())


def set_num_threads(int n):
    """Threads used by the kernels (0 = OpenMP's default)."""
    global _num_threads
    if n < 0:
        raise ValueError(f"number of threads must be >= 0, got {n}")
    _num_threads = n


def get_num_threads():
    """Threads the kernels will use."""
    return _num_threads if _num_threads > 0 else rbe_max_threads()


cdef inline int _threads() noexcept nogil:
    return _num_threads if _num_threads > 0 else rbe_max_threads()
include "_hybrid.pxi"
