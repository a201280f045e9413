# cython: language_level=3
"""Typed wrappers of rbe/include/rbe/hybrid.h, used by rbe.hybrid.

Every wrapper checks the array sizes against the grid before any pointer is used; the backward
kernels themselves skip out-of-block indices and unknown slots, and a ForwardPlan checks every
index it holds when it is built, so no input reaches memory outside the arrays. Loops run
without the GIL, one block row (or column) per iteration, so each thread owns its outputs and
results do not depend on the thread count.
"""
cimport cython
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uintptr_t
from scipy.linalg.cython_blas cimport dgemm, sgemm

import numpy as np

from rbe._cache import workspace
from rbe._core cimport (
    _bias_pointer, _check_kernel_choice, _check_plan_status, _chosen_family, _chosen_simd,
    _forward_output, _threads,
)
from rbe._kernels cimport RBE_POOL_MIN_WORK

ctypedef fused real:
    float
    double


cdef rbe_hybrid_grid _hybrid_grid(shape, block, const uint8_t[::1] slot,
                                  const int64_t[::1] offsets, const uint16_t[::1] index,
                                  const float[::1] values, int64_t nslots,
                                  int64_t batch) except *:
    cdef rbe_hybrid_grid g
    g.rows, g.cols = shape
    g.bh, g.bw = block
    if g.rows < 1 or g.cols < 1 or g.bh < 1 or g.bw < 1:
        raise ValueError(f"shape {shape} and block {block} must be positive")
    if g.bh * g.bw > 65536:
        raise ValueError(f"block {block} has more than 65536 elements")
    g.grid_rows = (g.rows + g.bh - 1) // g.bh
    g.grid_cols = (g.cols + g.bw - 1) // g.bw
    cdef int64_t nblocks = g.grid_rows * g.grid_cols
    if slot.shape[0] != nblocks or offsets.shape[0] != nblocks + 1:
        raise ValueError(f"expected {nblocks} blocks, got slot {slot.shape[0]}, "
                         f"offsets {offsets.shape[0]} (blocks + 1)")
    if values.shape[0] != index.shape[0]:
        raise ValueError("index and values must have the same length")
    cdef int64_t b
    if offsets[0] != 0 or offsets[nblocks] != index.shape[0]:
        raise ValueError(f"offsets must run from 0 to the number of entries {index.shape[0]}")
    for b in range(nblocks):
        if offsets[b + 1] < offsets[b]:
            raise ValueError("offsets must be non-decreasing")
    if nslots < 1 or batch < 1:
        raise ValueError("need at least one transform slot and one batch column")
    g.nslots = nslots
    g.batch = batch
    g.magic_full = rbe_hybrid_magic(g.bw)
    g.slot = &slot[0]
    g.offsets = &offsets[0]
    g.index = &index[0] if index.shape[0] > 0 else NULL
    g.values = &values[0] if index.shape[0] > 0 else NULL
    return g


# Below this many multiply-adds (entries x batch) a backward product runs on the calling
# thread. The backward products use OpenMP teams right after multi-threaded BLAS calls, whose
# threads keep spinning for a while and hold the cores the team needs: they start one only for
# work that outlasts that contention.
cdef int64_t _HYBRID_BACKWARD_PARALLEL_MIN = 1 << 26
rbe_kernel_init()   # this module's copy of the CPU's capabilities


cdef inline int _hybrid_threads(const rbe_hybrid_grid *g, int64_t items,
                                int64_t minimum) noexcept nogil:
    if g.offsets[g.grid_rows * g.grid_cols] * g.batch < minimum:
        return 1
    return <int>min(<int64_t>_threads(), items)


cdef _check_shape(name, tuple actual, tuple expected):
    if actual != expected:
        raise ValueError(f"{name} must have shape {expected}, got {actual}")


def hybrid_cols_backward(shape, block, const uint8_t[::1] slot,
                         const int64_t[::1] offsets, const uint16_t[::1] index,
                         const float[::1] values,
                         const real[:, :, ::1] a, real[:, :, ::1] dz):
    """dz += S^T a for every block; a is (rows, nslots, batch), dz is (cols, nslots, batch)."""
    cdef rbe_hybrid_grid g = _hybrid_grid(shape, block, slot, offsets, index, values, a.shape[1],
                                          a.shape[2])
    _check_shape("a", (a.shape[0], a.shape[1], a.shape[2]), (g.rows, g.nslots, g.batch))
    _check_shape("dz", (dz.shape[0], dz.shape[1], dz.shape[2]), (g.cols, g.nslots, g.batch))
    cdef int64_t bj
    if index.shape[0] == 0:
        return
    with nogil:
        for bj in prange(g.grid_cols, schedule="static",
                         num_threads=_hybrid_threads(&g, g.grid_cols,
                                                     _HYBRID_BACKWARD_PARALLEL_MIN)):
            if real is float:
                rbe_hybrid_cols_backward_f32(&g, &a[0, 0, 0], &dz[0, 0, 0], bj)
            else:
                rbe_hybrid_cols_backward_f64(&g, &a[0, 0, 0], &dz[0, 0, 0], bj)


def hybrid_value_grads(shape, block, const uint8_t[::1] slot, const int64_t[::1] offsets,
                       const uint16_t[::1] index, const float[::1] values, const real[:, :, ::1] a,
                       const real[:, :, ::1] z, real[::1] grad):
    """grad[e] = a[row, slot] . z[col, slot] for every entry e (0 for one outside its block)."""
    cdef rbe_hybrid_grid g = _hybrid_grid(shape, block, slot, offsets, index, values, a.shape[1],
                                          a.shape[2])
    _check_shape("a", (a.shape[0], a.shape[1], a.shape[2]), (g.rows, g.nslots, g.batch))
    _check_shape("z", (z.shape[0], z.shape[1], z.shape[2]), (g.cols, g.nslots, g.batch))
    _check_shape("grad", (grad.shape[0],), (index.shape[0],))
    cdef int64_t bi
    if index.shape[0] == 0:
        return
    with nogil:
        for bi in prange(g.grid_rows, schedule="static",
                         num_threads=_hybrid_threads(&g, g.grid_rows,
                                                     _HYBRID_BACKWARD_PARALLEL_MIN)):
            if real is float:
                rbe_hybrid_value_grads_f32(&g, &a[0, 0, 0], &z[0, 0, 0], &grad[0], bi)
            else:
                rbe_hybrid_value_grads_f64(&g, &a[0, 0, 0], &z[0, 0, 0], &grad[0], bi)


cdef int64_t _BLAS_INT_MAX = 2147483647


cdef _int64s(name, values, int64_t count):
    """A private int64 copy of ``values`` with ``count`` entries."""
    array = np.array(values, dtype=np.int64).ravel()
    if array.shape[0] != count:
        raise ValueError(f"{name} must have {count} entries, got {array.shape[0]}")
    array.flags.writeable = False
    return array


cdef _uint32s(name, values, int64_t count):
    """A private uint32 copy of ``count`` indices, each in uint32's range."""
    indices = np.asarray(values).ravel()
    if indices.shape[0] != count:
        raise ValueError(f"{name} must have {count} entries (rowptr's last)")
    if count and (indices.dtype.kind not in "iu" or indices.min() < 0
                  or indices.max() > 4294967295):
        raise ValueError(f"{name} must hold integers from 0 to 2**32 - 1")
    array = indices.astype(np.uint32)
    array.flags.writeable = False
    return array


cdef _classes(name, values, int64_t count, int64_t nclasses):
    """_int64s of at least one class number below ``nclasses``."""
    array = _int64s(name, values, count)
    if count == 0 or array.min() < 0 or array.max() >= nclasses:
        raise ValueError(f"{name} must name classes 0 .. {nclasses - 1} of at least one block")
    return array


cdef _matrices(name, matrices, dtype):
    """Private C-contiguous copies of the class matrices, and their shapes."""
    copies = [np.array(m, dtype=dtype, order="C") for m in matrices]
    if not copies or any(m.ndim != 2 or m.size == 0 for m in copies):
        raise ValueError(f"{name} must be non-empty 2-d matrices")
    if any(max(m.shape) > _BLAS_INT_MAX for m in copies):
        raise ValueError(f"{name} are too large for the BLAS index type")
    for m in copies:
        m.flags.writeable = False
    return copies, _int64s(name, [m.shape[0] for m in copies], len(copies)), \
        _int64s(name, [m.shape[1] for m in copies], len(copies))


cdef void _check_runs(name, const int64_t[::1] runs, const int64_t[::1] cls,
                      const int64_t[::1] start, const int64_t[::1] step_start,
                      const int64_t[::1] first, const int64_t[::1] step_first,
                      int64_t count) except *:
    """Runs from 0 to count, each of one class and consecutive in both arrays it addresses
    (start + step_start[class], first + step_first[class])."""
    if runs.shape[0] < 2 or runs[0] != 0 or runs[runs.shape[0] - 1] != count:
        raise ValueError(f"{name} must run from 0 to {count}")
    cdef int64_t t, j, c
    for t in range(runs.shape[0] - 1):
        if runs[t + 1] <= runs[t]:
            raise ValueError(f"{name} must increase")
        for j in range(runs[t] + 1, runs[t + 1]):
            c = cls[j - 1]
            if cls[j] != c or start[j] != start[j - 1] + step_start[c] \
                    or first[j] != first[j - 1] + step_first[c]:
                raise ValueError(f"{name} entry {t} is not one class of consecutive blocks")


cdef void _check_axis(name, const int64_t[::1] cls, const int64_t[::1] start,
                      const int64_t[::1] length, int64_t features, const int64_t[::1] first,
                      const int64_t[::1] rows, int64_t total_rows) except *:
    """Every block column (row) addresses features start .. start + length
    and work rows first .. first + rows, both increasing without overlap."""
    cdef int64_t j, c, previous_end = 0, previous_rows = 0
    for j in range(cls.shape[0]):
        c = cls[j]
        if start[j] < previous_end or first[j] < previous_rows:
            raise ValueError(f"{name} {j} overlaps the one before")
        previous_end, previous_rows = start[j] + length[c], first[j] + rows[c]
        if previous_end > features or previous_rows > total_rows:
            raise ValueError(f"{name} {j} addresses elements outside the arrays")


@cython.auto_pickle(False)      # it holds pointers into its own arrays
cdef class ForwardPlan:
    """The forward product y = W x + b of a hybrid layer (rbe_hybrid_plan in hybrid.h), with
    its operators and indices: rbe.hybrid builds one per layer and dtype. Every index is
    checked here, against the plan's own sizes, so ``forward`` needs only check the sizes of
    the arrays it is given; the plan keeps private read-only copies of what it is built from.
    """
    cdef rbe_hybrid_plan plan
    cdef object _keep
    cdef object _col_pointers, _row_pointers
    cdef const int64_t[::1] _one_col_runs, _one_row_runs, _col_items, _row_items
    cdef readonly object dtype
    cdef readonly int64_t z_rows, u_rows, n_values, n_coef, work

    def __init__(self, int64_t in_features, int64_t out_features, dtype, *, col_x0, col_z0,
                 col_class, col_matrices, row_y0, row_u0, row_class, row_matrices, rowptr,
                 row_sparse, src, zrow, int64_t n_values, row_terms, term_col, term_count,
                 term_proj, term_rank, term_sums, int64_t n_coef, col_runs, row_runs):
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        if not 0 < in_features <= _BLAS_INT_MAX or not 0 < out_features <= _BLAS_INT_MAX:
            raise ValueError(f"bad layer shape ({out_features}, {in_features})")
        if n_values < 0 or n_values > 4294967295 or n_coef < 0:
            raise ValueError("bad numbers of values or coefficients")
        col_m, col_zw, col_n = _matrices("column matrices", col_matrices, self.dtype)
        row_m, row_h, row_uw = _matrices("row matrices", row_matrices, self.dtype)
        ncols, nrows = np.asarray(col_class).size, np.asarray(row_class).size
        arrays = {
            "col_x0": _int64s("col_x0", col_x0, ncols), "col_z0": _int64s("col_z0", col_z0, ncols),
            "col_class": _classes("col_class", col_class, ncols, len(col_m)),
            "row_y0": _int64s("row_y0", row_y0, nrows), "row_u0": _int64s("row_u0", row_u0, nrows),
            "row_class": _classes("row_class", row_class, nrows, len(row_m)),
            "col_n": col_n, "col_zw": col_zw, "row_h": row_h, "row_uw": row_uw,
            "row_sparse": _int64s("row_sparse", row_sparse, len(row_m)),
            "row_terms": _int64s("row_terms", row_terms, nrows + 1),
        }
        nterms = arrays["row_terms"][nrows]
        for name, values in (("term_col", term_col), ("term_count", term_count),
                             ("term_proj", term_proj), ("term_rank", term_rank),
                             ("term_sums", term_sums)):
            arrays[name] = _int64s(name, values, nterms)
        self.z_rows = int(np.max(arrays["col_z0"] + col_zw[arrays["col_class"]], initial=0))
        self.u_rows = int(np.max(arrays["row_u0"] + row_uw[arrays["row_class"]], initial=0))
        arrays["rowptr"] = _int64s("rowptr", rowptr, self.u_rows + 1)
        entries = arrays["rowptr"][self.u_rows]
        arrays["src"] = _uint32s("src", src, entries)
        arrays["zrow"] = _uint32s("zrow", zrow, entries)
        self.n_values, self.n_coef = n_values, n_coef
        self._keep = (arrays, col_m, row_m)
        self._col_pointers = np.array([m.ctypes.data for m in col_m], np.uintp)
        self._row_pointers = np.array([m.ctypes.data for m in row_m], np.uintp)
        self._fill(arrays, ncols, nrows, in_features, out_features)
        self._check(arrays)
        self._one_col_runs = _int64s("col_runs", col_runs, np.asarray(col_runs).size)
        self._one_row_runs = _int64s("row_runs", row_runs, np.asarray(row_runs).size)
        self._col_items = np.arange(ncols + 1, dtype=np.int64)
        self._row_items = np.arange(nrows + 1, dtype=np.int64)
        for runs, name in ((self._one_col_runs, "col_runs"), (self._col_items, "columns")):
            _check_runs(name, runs, arrays["col_class"], arrays["col_x0"], col_n,
                        arrays["col_z0"], col_zw, ncols)
        for runs, name in ((self._one_row_runs, "row_runs"), (self._row_items, "rows")):
            _check_runs(name, runs, arrays["row_class"], arrays["row_y0"], row_h,
                        arrays["row_u0"], row_uw, nrows)
        self.work = int((col_zw * col_n)[arrays["col_class"]].sum()
                        + (row_h * row_uw)[arrays["row_class"]].sum() + entries
                        + 8 * (arrays["term_rank"] * arrays["term_count"]).sum())

    cdef void _fill(self, dict arrays, int64_t ncols, int64_t nrows, int64_t in_features,
                    int64_t out_features) except *:
        cdef rbe_hybrid_plan *p = &self.plan
        p.in_features, p.out_features = in_features, out_features
        p.z_rows, p.u_rows, p.ncols, p.nrows = self.z_rows, self.u_rows, ncols, nrows
        cdef const uintptr_t[::1] col_pointers = self._col_pointers
        cdef const uintptr_t[::1] row_pointers = self._row_pointers
        p.col_matrix = <const void *const *>&col_pointers[0]
        p.row_matrix = <const void *const *>&row_pointers[0]
        p.col_x0, p.col_z0, p.col_class = _data(arrays["col_x0"]), _data(arrays["col_z0"]), \
            _data(arrays["col_class"])
        p.col_n, p.col_zw = _data(arrays["col_n"]), _data(arrays["col_zw"])
        p.row_y0, p.row_u0, p.row_class = _data(arrays["row_y0"]), _data(arrays["row_u0"]), \
            _data(arrays["row_class"])
        p.row_h, p.row_uw = _data(arrays["row_h"]), _data(arrays["row_uw"])
        p.row_sparse = _data(arrays["row_sparse"])
        p.rowptr, p.row_terms = _data(arrays["rowptr"]), _data(arrays["row_terms"])
        p.term_col, p.term_count = _data(arrays["term_col"]), _data(arrays["term_count"])
        p.term_proj, p.term_rank = _data(arrays["term_proj"]), _data(arrays["term_rank"])
        p.term_sums = _data(arrays["term_sums"])
        cdef const uint32_t[::1] src = arrays["src"], zrow = arrays["zrow"]
        p.src = &src[0] if src.shape[0] else NULL
        p.zrow = &zrow[0] if zrow.shape[0] else NULL

    cdef void _check(self, dict arrays) except *:
        cdef rbe_hybrid_plan *p = &self.plan
        _check_axis("block column", arrays["col_class"], arrays["col_x0"], arrays["col_n"],
                    p.in_features, arrays["col_z0"], arrays["col_zw"], p.z_rows)
        _check_axis("block row", arrays["row_class"], arrays["row_y0"], arrays["row_h"],
                    p.out_features, arrays["row_u0"], arrays["row_uw"], p.u_rows)
        if ((arrays["row_sparse"] < 0) | (arrays["row_sparse"] > arrays["row_uw"])).any():
            raise ValueError("row_sparse must be between 0 and the rows of each block row")
        if p.z_rows > _BLAS_INT_MAX or p.u_rows > _BLAS_INT_MAX:
            raise ValueError("work arrays too large for the BLAS index type")
        cdef int64_t q, e, t, i
        if p.rowptr[0] != 0:
            raise ValueError("rowptr must start at 0")
        for q in range(p.u_rows):
            if p.rowptr[q + 1] < p.rowptr[q]:
                raise ValueError("rowptr must be non-decreasing")
        for e in range(p.rowptr[p.u_rows]):
            if p.src[e] >= self.n_values or p.zrow[e] >= p.z_rows:
                raise ValueError(f"entry {e} addresses a value or z row outside the arrays")
        if p.row_terms[0] != 0:
            raise ValueError("row_terms must start at 0")
        for i in range(p.nrows):
            if p.row_terms[i + 1] < p.row_terms[i]:
                raise ValueError("row_terms must be non-decreasing")
            for t in range(p.row_terms[i], p.row_terms[i + 1]):
                self._check_term(i, t)

    cdef void _check_term(self, int64_t i, int64_t t) except *:
        """Basis term t of block row i: its block columns are one class, equally spaced in z;
        its projections, sums and coefficients lie inside their arrays."""
        cdef rbe_hybrid_plan *p = &self.plan
        cdef int64_t j0 = p.term_col[t], count = p.term_count[t], rank = p.term_rank[t], j
        if j0 < 0 or count < 0 or j0 + count > p.ncols or rank < 0 or p.term_proj[t] < 0 \
                or p.term_sums[t] < 0:
            raise ValueError(f"basis term {t} addresses blocks outside the grid")
        cdef int64_t c = p.col_class[j0] if count else 0
        for j in range(j0, j0 + count):
            if p.col_class[j] != c or p.col_z0[j] != p.col_z0[j0] + (j - j0) * p.col_zw[c]:
                raise ValueError(f"basis term {t} spans block columns of different layouts")
        if count and p.term_proj[t] + rank > p.col_zw[c] \
                or p.term_sums[t] + 8 * rank > p.row_uw[p.row_class[i]] \
                or (i * p.ncols + j0 + count) * 8 > self.n_coef:
            raise ValueError(f"basis term {t} addresses elements outside the arrays")

    def forward(self, x, values, coef, bias=None, factors=None, out=None):
        """y = W x + b for x of shape (in_features,) or (batch, in_features), C-contiguous of
        the plan's dtype, into ``out`` (x's shape with out_features) or a new array. values,
        coef, bias (or None) and factors ((factor_out, factor_in) of the low-rank term, or
        None) are the layer's float32 parameters, read as they are at each call; the sparse
        rows run on the chosen SIMD path. Raises ValueError when x or the result holds NaN
        or inf, or x values beyond float32's range."""
        cdef rbe_hybrid_plan *p = &self.plan
        out = _forward_output(x, out, p.in_features, p.out_features, (self.dtype,))
        cdef int64_t nb = x.size // p.in_features
        if max(self.z_rows, self.u_rows, p.out_features) * nb > _BLAS_INT_MAX:
            raise ValueError(f"batch of {nb} is too large for the BLAS index type")
        cdef rbe_hybrid_forward_job job
        job.plan, job.batch = &self.plan, nb
        cdef const float[::1] v = values, c = coef.reshape(-1), f_in, f_out
        if v.shape[0] != self.n_values or c.shape[0] != self.n_coef:
            raise ValueError(f"expected {self.n_values} values and {self.n_coef} coefficients, "
                             f"got {v.shape[0]} and {c.shape[0]}")
        job.values = &v[0] if v.shape[0] else NULL
        job.coef = &c[0] if c.shape[0] else NULL
        job.n_coef = c.shape[0]
        job.bias = _bias_pointer(bias, p.out_features)
        job.rank, job.factor_in, job.factor_out = 0, NULL, NULL
        if factors is not None:
            f_out, f_in = factors[0].reshape(-1), factors[1].reshape(-1)
            job.rank = f_in.shape[0] // p.in_features
            if job.rank < 1 or f_in.shape[0] != p.in_features * job.rank \
                    or f_out.shape[0] != p.out_features * job.rank:
                raise ValueError(f"factors must be ({p.out_features}, rank) and "
                                 f"({p.in_features}, rank) with the same rank >= 1")
            job.factor_in, job.factor_out = &f_in[0], &f_out[0]
        cdef int simd = _chosen_simd()
        _check_kernel_choice(simd, _chosen_family())
        cdef rbe_hybrid_rows_ops rows_ops = rbe_hybrid_select(simd)
        cdef bint single = self.dtype == np.float32
        cdef int64_t size = 4 if single else 8
        job.sgemm, job.dgemm, job.rows_f32, job.rows_f64 = NULL, NULL, NULL, NULL
        if single:
            job.sgemm, job.rows_f32 = sgemm, rows_ops.f32
        else:
            job.dgemm, job.rows_f64 = dgemm, rows_ops.f64
        cdef const int64_t[::1] cols = self._one_col_runs if nb == 1 else self._col_items
        cdef const int64_t[::1] rows = self._one_row_runs if nb == 1 else self._row_items
        job.col_runs, job.row_runs = &cols[0], &rows[0]
        job.n_col_runs, job.n_row_runs = cols.shape[0] - 1, rows.shape[0] - 1
        cdef const unsigned char[::1] x_bytes = x.reshape(-1).view(np.uint8)
        cdef unsigned char[::1] y_bytes = out.reshape(-1).view(np.uint8)
        cdef unsigned char[::1] z = workspace("hybrid.z", self.z_rows * nb * size, np.uint8)
        cdef unsigned char[::1] u = workspace("hybrid.u", self.u_rows * nb * size, np.uint8)
        # the projections x F_in, then (float64) the parameters converted
        cdef int64_t converted = 0 if single else \
            self.n_coef + (p.in_features + p.out_features) * job.rank
        cdef unsigned char[::1] low_rank = workspace(
            "hybrid.low_rank", (nb * job.rank + converted) * size + 8, np.uint8)
        job.x, job.y = &x_bytes[0], &y_bytes[0]
        job.z, job.u = &z[0], &u[0]
        job.projections = &low_rank[0]
        job.converted = &low_rank[nb * job.rank * size]
        cdef int64_t work = (self.work + (p.in_features + p.out_features) * job.rank) * nb
        cdef int threads = 1 if work < RBE_POOL_MIN_WORK else _threads(), status
        with nogil:
            status = rbe_hybrid_forward(&job, threads)
        _check_plan_status(status)
        return out


cdef const int64_t *_data(array) except? NULL:
    """The first element of a (kept) int64 array; NULL when it is empty."""
    cdef const int64_t[::1] view = array
    return &view[0] if view.shape[0] else NULL
