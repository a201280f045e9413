# What rbe._core shares with the other extensions: the kernels' thread count and kernel choice,
# the checks of a kernel choice and of shape tables, and the forward plans' argument and status
# checks.
from libc.stdint cimport int64_t

from rbe._kernels cimport rbe_tables

cdef int _threads() noexcept nogil
cdef int _chosen_simd() noexcept nogil
cdef int _chosen_family() noexcept nogil
cdef void _check_kernel_choice(int simd, int family) except *
cdef rbe_tables _shape_tables(const float[:, :, ::1] rho, const float[:, :, ::1] sin_phi,
                              const float[:, :, ::1] cos_phi, int w) except *
cdef object _forward_output(x, out, int64_t in_features, int64_t out_features, tuple dtypes)
cdef const float *_bias_pointer(bias, int64_t out_features) except *
cdef void _check_plan_status(int status) except *
