# cython: language_level=3
"""The seed-block weight kernels (rbe/include/rbe/weight.h), the kernels' thread count and
SIMD path, and what every layer kind's forward plan shares.

Arguments are validated by the Python callers (rbe.kernel, ...) and again here for sizes,
before any pointer is touched; every loop runs without the GIL. rbe._fused and rbe._hybrid
cimport the thread count, the kernel choice and the checks declared in _core.pxd.
"""
from cython.parallel cimport prange, threadid
from libc.stdint cimport int64_t, uint64_t

from rbe._kernels cimport (
    RBE_APPROX_CORDIC, RBE_APPROX_LUT, RBE_APPROX_POLY, RBE_FN_COS, RBE_FN_EXP, RBE_FN_LOG1P,
    RBE_FN_SIN, RBE_FN_TANH, RBE_N_SIMD, RBE_PLAN_INPUT_BEYOND_FLOAT32, RBE_PLAN_INPUT_NOT_FINITE,
    RBE_PLAN_OK, RBE_PLAN_OUTPUT_NOT_FINITE, RBE_SERIAL_BLAS_WORK, RBE_SIMD_SCALAR,
    rbe_approx_eval, rbe_block_fn, rbe_block_precise, rbe_block_select, rbe_generate_block,
    rbe_get_local_threads, rbe_kernel_init, rbe_max_threads, rbe_openmp_enabled,
    rbe_scratch_floats, rbe_set_local_threads, rbe_simd_missing, rbe_simd_name,
    rbe_simd_runnable, rbe_tables, rbe_thread_limit,
)

import numpy as np

cdef int _num_threads = 0


def openmp_enabled():
    """True when the extension was built with OpenMP."""
    return bool(rbe_openmp_enabled())


#: Most threads set_num_threads accepts (and the kernels use, whatever OMP_NUM_THREADS says):
#: more only oversubscribes the cores, and every thread of a team needs its own stack (OpenMP
#: aborts the process when it cannot start one).
cdef enum:
    _MAX_THREADS = 256
MAX_THREADS = _MAX_THREADS


def max_threads():
    """The largest thread count :func:`set_num_threads` accepts: MAX_THREADS, or OpenMP's
    thread limit (OMP_THREAD_LIMIT) when that is lower."""
    return min(MAX_THREADS, rbe_thread_limit())


def _check_count(n):
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"number of threads must be an integer >= 0, got {n!r}")
    if n > max_threads():
        raise ValueError(f"number of threads must be at most {max_threads()}, got {n}")
    return int(n)


def set_num_threads(n):
    """Threads used by the kernels, process-wide (0 = OpenMP's default), at most
    :func:`max_threads`. A :class:`threads` block of the calling thread takes precedence."""
    global _num_threads
    _num_threads = _check_count(n)


def get_num_threads():
    """Threads the kernels will use when called from this thread."""
    return _threads()


def num_threads_set():
    """True when the thread count was chosen: by :func:`set_num_threads` or, in the calling
    thread, by a :class:`threads` block."""
    return _num_threads > 0 or rbe_get_local_threads() > 0


class threads:
    """Context manager: the kernels called from this thread use at most ``n`` threads (0:
    the process-wide count) inside the block; other threads keep theirs. Re-entrant.

    >>> with rbe.threads(1):
    ...     y = layer.forward(x)
    """

    def __init__(self, n):
        self.n = _check_count(n)
        self._saved = []

    def __enter__(self):
        self._saved.append(rbe_get_local_threads())
        rbe_set_local_threads(self.n)
        return self

    def __exit__(self, *exc):
        rbe_set_local_threads(self._saved.pop())


cdef int _threads() noexcept nogil:
    cdef int local = rbe_get_local_threads()
    if local > 0:
        return local
    return _num_threads if _num_threads > 0 else min(rbe_max_threads(), _MAX_THREADS)


# ---- seed-block weight kernel ---------------------------------------------------------------

#: SIMD paths in order of preference (rbe/src/dispatch.c's table); "avx2_vl" is the AVX2 code
#: with AVX-512VL's 32 vector registers.
SIMD_PATHS = {rbe_simd_name(k).decode(): k for k in range(RBE_N_SIMD)}
APPROX_FAMILIES = {"poly": RBE_APPROX_POLY, "lut": RBE_APPROX_LUT, "cordic": RBE_APPROX_CORDIC}
#: The preferred path this CPU runs (the default), and every path it runs.
BEST_SIMD = {v: k for k, v in SIMD_PATHS.items()}[rbe_kernel_init()]
RUNNABLE_SIMD = tuple(name for name, k in SIMD_PATHS.items() if rbe_simd_runnable(k))
#: Multiply-adds up to which OpenBLAS keeps a product on the calling thread (rbe/plan.h).
SERIAL_BLAS_WORK = RBE_SERIAL_BLAS_WORK
cdef enum:
    # Outputs larger than this are written with non-temporal stores (they cannot stay in cache).
    STREAM_BYTES = 8 << 20


cdef void _check_kernel_choice(int simd, int family) except *:
    """A clear ValueError for a SIMD path or family the selectors refuse, and for a path whose
    kernel tables are incomplete."""
    if rbe_block_select(simd, family) != NULL and rbe_simd_missing(simd) == NULL:
        return
    names = {v: k for k, v in SIMD_PATHS.items()}
    if simd not in names:
        raise ValueError(f"simd must be one of {sorted(SIMD_PATHS.values())}, got {simd}")
    if not rbe_simd_runnable(simd):
        raise ValueError(f"SIMD path {names[simd]!r} is not supported by this CPU "
                         f"(it runs {RUNNABLE_SIMD})")
    if family not in APPROX_FAMILIES.values():
        raise ValueError(f"family must be one of {sorted(APPROX_FAMILIES.values())}, "
                         f"got {family}")
    raise ValueError(f"SIMD path {names[simd]!r} lacks {rbe_simd_missing(simd).decode()} "
                     f"kernels in rbe/src/dispatch.c")


def missing_kernels(int simd):
    """The table in which SIMD path ``simd`` lacks a kernel (rbe_simd_missing), or None."""
    missing = rbe_simd_missing(simd)
    return None if missing == NULL else missing.decode()


# The SIMD path and approximation family the layers' kernels run (rbe.kernel sets them, from
# RBE_SIMD and RBE_APPROX or use_simd / use_approx); read by every plan on every call.
cdef int _simd_choice = SIMD_PATHS[BEST_SIMD]
cdef int _family_choice = RBE_APPROX_POLY


def kernel_choice():
    """(SIMD path, approximation family) the layers' kernels run, as numbers."""
    return _simd_choice, _family_choice


def set_kernel_choice(int simd, int family):
    """Make the layers' kernels run a SIMD path and family (numbers; refused with ValueError
    when this CPU cannot run the path)."""
    global _simd_choice, _family_choice
    _check_kernel_choice(simd, family)
    _simd_choice, _family_choice = simd, family


cdef int _chosen_simd() noexcept nogil:
    return _simd_choice


cdef int _chosen_family() noexcept nogil:
    return _family_choice


# ---- what the forward plans share ------------------------------------------------------------

cdef object _forward_output(x, out, int64_t in_features, int64_t out_features, tuple dtypes):
    """The array a forward plan writes: ``out`` if it fits, else a new one; x checked first
    (C-contiguous, one of ``dtypes``, shape (in_features,) or (batch, in_features))."""
    if not isinstance(x, np.ndarray) or x.dtype not in dtypes or x.ndim not in (1, 2) \
            or x.shape[x.ndim - 1] != in_features or x.size == 0 or not x.flags.c_contiguous:
        names = " or ".join(np.dtype(d).name for d in dtypes)
        raise ValueError(f"x must be a C-contiguous {names} array of shape ({in_features},) "
                         f"or (batch, {in_features})")
    shape = x.shape[:x.ndim - 1] + (out_features,)
    if out is None:
        return np.empty(shape, x.dtype)
    if not isinstance(out, np.ndarray) or out.dtype != x.dtype or out.shape != shape \
            or not (out.flags.c_contiguous and out.flags.writeable):
        raise ValueError(f"out must be a writeable C-contiguous {x.dtype} array of shape "
                         f"{shape}")
    return out


cdef const float *_bias_pointer(bias, int64_t out_features) except *:
    """The float32 values of a forward plan's bias (None: NULL), checked to have
    ``out_features`` entries; valid while the caller holds ``bias``."""
    if bias is None:
        return NULL
    cdef const float[::1] b = bias
    if b.shape[0] != out_features:
        raise ValueError(f"bias must have {out_features} entries, got {b.shape[0]}")
    return &b[0]


cdef void _check_plan_status(int status) except *:
    """The ValueError a forward plan's status (rbe/plan.h) stands for, worded as rbe._checks
    words the same problems elsewhere."""
    if status == RBE_PLAN_OK:
        return
    from rbe import _checks
    if status == RBE_PLAN_INPUT_NOT_FINITE:
        raise _checks.not_finite("X")
    if status == RBE_PLAN_INPUT_BEYOND_FLOAT32:
        raise _checks.beyond_float32("X")
    if status == RBE_PLAN_OUTPUT_NOT_FINITE:
        raise _checks.overflow("forward")
    raise ValueError(f"unknown status {status} of a forward plan")


cdef rbe_tables _shape_tables(const float[:, :, ::1] rho, const float[:, :, ::1] sin_phi,
                              const float[:, :, ::1] cos_phi, int w) except *:
    cdef rbe_tables t
    if not (rho.shape[0] == sin_phi.shape[0] == cos_phi.shape[0]
            and rho.shape[1] == sin_phi.shape[1] == cos_phi.shape[1] == 4
            and rho.shape[2] == sin_phi.shape[2] == cos_phi.shape[2]):
        raise ValueError("shape tables must all be (h, 4, g)")
    if rho.shape[2] % 8 or 4 * rho.shape[2] < w or w < 1 or rho.shape[0] < 1:
        raise ValueError(f"shape tables (g={rho.shape[2]}) do not fit block width {w}")
    t.h, t.w, t.g = rho.shape[0], w, rho.shape[2]
    t.rho, t.sin_phi, t.cos_phi = &rho[0, 0, 0], &sin_phi[0, 0, 0], &cos_phi[0, 0, 0]
    return t


def generate_fast(const uint64_t[::1] hi, const float[:, :, ::1] rho,
                  const float[:, :, ::1] sin_phi, const float[:, :, ::1] cos_phi,
                  float[:, :, ::1] out, float[:, :, ::1] dr=None, float[:, :, ::1] dth=None,
                  int simd=RBE_SIMD_SCALAR, int family=RBE_APPROX_POLY):
    """Fill out[k] (and dr[k], dth[k] when given) with the fast weights of seed hi[k]."""
    cdef rbe_tables t = _shape_tables(rho, sin_phi, cos_phi, out.shape[2])
    cdef Py_ssize_t n = hi.shape[0], k, hw = <Py_ssize_t>t.h * t.w
    cdef bint want_grad = dr is not None
    if out.shape[0] != n or out.shape[1] != t.h:
        raise ValueError(f"output shape {tuple(out.shape)[:3]} does not match {n} seeds "
                         f"of {t.h}x{t.w}")
    if want_grad != (dth is not None):
        raise ValueError("dr and dth must be given together")
    if want_grad and (tuple(dr.shape)[:3] != tuple(out.shape)[:3]
                      or tuple(dth.shape)[:3] != tuple(out.shape)[:3]):
        raise ValueError("gradient outputs must have the shape of the weights")
    _check_kernel_choice(simd, family)
    cdef rbe_block_fn fn = rbe_block_select(simd, family)
    if n == 0:
        return
    cdef int threads = _threads()
    cdef float[:, ::1] scratch = np.empty((threads, rbe_scratch_floats(t.g)), np.float32)
    cdef int stream = n * hw * 4 * (3 if want_grad else 1) > STREAM_BYTES
    cdef float *w_ptr = &out[0, 0, 0]
    cdef float *dr_ptr = &dr[0, 0, 0] if want_grad else NULL
    cdef float *dth_ptr = &dth[0, 0, 0] if want_grad else NULL
    with nogil:
        # guided: blocks are independent, so a core that is busy elsewhere only costs its share
        for k in prange(n, schedule="guided", num_threads=threads):
            rbe_generate_block(fn, family, hi[k], &t, w_ptr + k * hw,
                               dr_ptr + k * hw if want_grad else NULL,
                               dth_ptr + k * hw if want_grad else NULL,
                               &scratch[threadid(), 0], stream)


#: The functions approx_eval evaluates.
APPROX_FUNCTIONS = {"exp": RBE_FN_EXP, "tanh": RBE_FN_TANH, "log1p": RBE_FN_LOG1P,
                    "sin": RBE_FN_SIN, "cos": RBE_FN_COS}


def approx_eval(int family, int function, const float[::1] x, float[::1] out):
    """out = the scalar approximation of APPROX_FUNCTIONS' `function` by `family` at x
    (what the kernels compute per weight; for tests of the quoted error bounds)."""
    if family not in APPROX_FAMILIES.values() or function not in APPROX_FUNCTIONS.values():
        raise ValueError(f"unknown approximation family {family} or function {function}")
    if out.shape[0] != x.shape[0]:
        raise ValueError(f"out has {out.shape[0]} elements for {x.shape[0]} inputs")
    if x.shape[0] == 0:
        return
    with nogil:
        rbe_approx_eval(family, function, &x[0], &out[0], x.shape[0])


def generate_precise(const uint64_t[::1] hi, double[:, :, ::1] out,
                     double[:, :, ::1] dr=None, double[:, :, ::1] dth=None):
    """Fill out[k] (and dr[k], dth[k] when given) with the float64 weights of seed hi[k]."""
    cdef Py_ssize_t n = hi.shape[0], k, hw = out.shape[1] * out.shape[2]
    cdef int h = out.shape[1], w = out.shape[2]
    cdef bint want_grad = dr is not None
    if out.shape[0] != n:
        raise ValueError(f"output holds {out.shape[0]} blocks for {n} seeds")
    if want_grad != (dth is not None):
        raise ValueError("dr and dth must be given together")
    if want_grad and (tuple(dr.shape)[:3] != tuple(out.shape)[:3]
                      or tuple(dth.shape)[:3] != tuple(out.shape)[:3]):
        raise ValueError("gradient outputs must have the shape of the weights")
    if n == 0 or hw == 0:
        return
    cdef double *w_ptr = &out[0, 0, 0]
    cdef double *dr_ptr = &dr[0, 0, 0] if want_grad else NULL
    cdef double *dth_ptr = &dth[0, 0, 0] if want_grad else NULL
    with nogil:
        for k in prange(n, schedule="static", num_threads=_threads()):
            rbe_block_precise(hi[k], h, w, w_ptr + k * hw,
                              dr_ptr + k * hw if want_grad else NULL,
                              dth_ptr + k * hw if want_grad else NULL)
