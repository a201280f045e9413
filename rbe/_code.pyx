# cython: language_level=3
"""Typed wrappers of rbe/include/rbe/code.h, used by rbe.code and rbe.trellis.

Every wrapper checks sizes and values that address memory (trellis sizes, overlaps, the plan's
arrays) before any pointer is used; loops run without the GIL. The encoder runs one tile per
item of rbe's helper pool (each chunk with its own work memory); a CodePlan runs its forward
product as the three stages of rbe_parallel_stages on the same pool.
"""
cimport cython
from libc.stdint cimport int64_t, uint8_t, uint32_t
from libc.stdlib cimport free, malloc

import numpy as np

from rbe._cache import workspace
from rbe._core cimport (
    _bias_pointer, _check_plan_status, _chosen_simd, _forward_output, _threads,
)
from rbe._kernels cimport RBE_POOL_MIN_WORK

rbe_kernel_init()   # this module's copy of the CPU's capabilities

TILE = RBE_CODE_TILE
STEPS = RBE_CODE_STEPS
LANES = RBE_CODE_LANES
GROUP = RBE_CODE_GROUP
MIN_BITS = RBE_CODE_MIN_BITS
MAX_BITS = RBE_CODE_MAX_BITS
MAX_STATE_BITS = RBE_CODE_MAX_STATE_BITS
MAX_ODD = RBE_CODE_MAX_ODD
WRAP_WINDOW = RBE_CODE_WRAP_WINDOW


cdef rbe_code_ops _ops(int simd) except *:
    cdef rbe_code_ops ops = rbe_code_select(simd)
    if ops.viterbi == NULL:
        raise ValueError(f"SIMD path {simd} is not supported by this CPU")
    return ops


# The search's values of each trellis (bits, state_bits), built once: read-only arrays.
_VALUES = {}


cdef void _check_trellis(int bits, int state_bits) except *:
    if not RBE_CODE_MIN_BITS <= bits <= RBE_CODE_MAX_BITS:
        raise ValueError(f"bits must be {RBE_CODE_MIN_BITS} .. {RBE_CODE_MAX_BITS}, got {bits}")
    if not bits < state_bits <= RBE_CODE_MAX_STATE_BITS:
        raise ValueError(f"state_bits must be {bits + 1} .. {RBE_CODE_MAX_STATE_BITS}, "
                         f"got {state_bits}")


cdef rbe_trellis _trellis(int bits, int state_bits) except *:
    _check_trellis(bits, state_bits)
    cdef float[::1] built
    values = _VALUES.get((bits, state_bits))
    if values is None:
        values = np.empty(rbe_code_values_size(bits, state_bits), np.float32)
        built = values
        rbe_code_values(bits, state_bits, &built[0])
        values.flags.writeable = False
        values = _VALUES.setdefault((bits, state_bits), values)
    cdef const float[::1] view = values
    cdef rbe_trellis t
    t.bits, t.state_bits, t.values = bits, state_bits, &view[0]
    return t


def viterbi(int bits, int state_bits, const float[::1] x, int64_t overlap=-1, int simd=-1):
    """(states, cost): the path of least squared error through the trellis for the targets x
    (rbe_code_viterbi in rbe/code.h); with overlap >= 0 only the paths of a circular stream
    whose first state's low state_bits - bits bits are ``overlap``."""
    cdef rbe_trellis t = _trellis(bits, state_bits)
    cdef rbe_code_ops ops = _ops(_chosen_simd() if simd < 0 else simd)
    cdef int64_t steps = x.shape[0]
    if steps < 1:
        raise ValueError("x must hold at least one target")
    if overlap < -1 or overlap >= (1 << (state_bits - bits)):
        raise ValueError(f"overlap must be -1 or 0 .. {(1 << (state_bits - bits)) - 1}, "
                         f"got {overlap}")
    states = np.empty(steps, np.uint32)
    cdef uint32_t[::1] out = states
    cdef size_t size = rbe_code_viterbi_work(&t, steps)
    cdef void *work = malloc(size)
    cdef double cost
    if work == NULL:
        raise MemoryError(f"cannot allocate {size} bytes for the Viterbi search")
    try:
        with nogil:
            cost = ops.viterbi(&t, &x[0], steps, overlap, &out[0], work)
    finally:
        free(work)
    return states, cost


ctypedef struct _encode_job:
    rbe_code_viterbi_fn viterbi
    const rbe_trellis *trellis
    const float *targets
    uint8_t *streams
    float *decoded
    double *errors
    int64_t count, chunk, stream_bytes
    size_t work_bytes
    int failed


cdef void _encode_chunk(void *ctx, int64_t item) noexcept nogil:
    """Tiles item * chunk .. of an _encode_job, with work memory of their own."""
    cdef _encode_job *job = <_encode_job *>ctx
    cdef void *work = malloc(job.work_bytes)
    cdef int64_t i
    if work == NULL:
        job.failed = 1
        return
    for i in range(item * job.chunk, min(job.count, (item + 1) * job.chunk)):
        job.errors[i] = rbe_code_encode_tile(job.viterbi, job.trellis,
                                             job.targets + i * RBE_CODE_STEPS,
                                             job.streams + i * job.stream_bytes,
                                             job.decoded + i * RBE_CODE_STEPS, work)
    free(work)


def encode_tiles(int bits, int state_bits, const float[:, ::1] targets,
                 uint8_t[:, ::1] streams, float[:, ::1] decoded, double[::1] errors,
                 int simd=-1):
    """Code every row of targets (tiles x 256, in step order) as a tail-biting stream
    (rbe_code_encode_tile): streams (tiles x 32 bits) bytes, decoded values, squared errors.
    Runs chunks of tiles on rbe's helper pool (whose idle threads sleep: the encoder
    alternates with BLAS products, whose threads would compete with spinning ones)."""
    cdef rbe_trellis t = _trellis(bits, state_bits)
    cdef _encode_job job
    job.viterbi = _ops(_chosen_simd() if simd < 0 else simd).viterbi
    job.count = targets.shape[0]
    if targets.shape[1] != RBE_CODE_STEPS or decoded.shape[1] != RBE_CODE_STEPS:
        raise ValueError(f"targets and decoded must have {RBE_CODE_STEPS} columns")
    if streams.shape[1] != 32 * bits:
        raise ValueError(f"streams must have {32 * bits} columns (bytes of a stream)")
    if not streams.shape[0] == decoded.shape[0] == errors.shape[0] == job.count:
        raise ValueError(f"streams, decoded and errors must have {job.count} rows")
    if job.count == 0:
        return
    cdef int threads = _threads()
    job.trellis, job.targets, job.streams = &t, &targets[0, 0], &streams[0, 0]
    job.decoded, job.errors, job.stream_bytes = &decoded[0, 0], &errors[0], 32 * bits
    job.work_bytes = rbe_code_viterbi_work(&t, RBE_CODE_STEPS)
    job.chunk = max(1, job.count // (4 * threads))
    job.failed = 0
    with nogil:
        rbe_parallel_for((job.count + job.chunk - 1) // job.chunk, threads, _encode_chunk, &job)
    if job.failed:
        raise MemoryError(f"cannot allocate {job.work_bytes} bytes for the Viterbi search")


cdef rbe_rotation _rotation(int64_t side, odd_matrix, list keep) except *:
    """The rotation of a side of ``side`` = 2^a * odd (a >= 4) values; odd_matrix is the
    odd x odd factor (None when odd == 1)."""
    cdef rbe_rotation r
    if side < RBE_CODE_TILE or side % RBE_CODE_TILE:
        raise ValueError(f"a rotated side must be a positive multiple of {RBE_CODE_TILE}, "
                         f"got {side}")
    r.odd = side
    while r.odd % 2 == 0:
        r.odd //= 2
    r.pow2 = side // r.odd
    if r.odd > RBE_CODE_MAX_ODD:
        raise ValueError(f"a rotated side's odd factor must be at most {RBE_CODE_MAX_ODD}, "
                         f"got {r.odd} (side {side})")
    r.odd_matrix = NULL
    cdef const float[:, ::1] q
    if r.odd > 1:
        if odd_matrix is None:
            raise ValueError(f"side {side} needs its {r.odd} x {r.odd} factor")
        q = np.array(odd_matrix, dtype=np.float32, order="C")
        if q.shape[0] != r.odd or q.shape[1] != r.odd:
            raise ValueError(f"the factor of side {side} must be {r.odd} x {r.odd}, "
                             f"got {q.shape[0]} x {q.shape[1]}")
        keep.append(q)
        r.odd_matrix = &q[0, 0]
    elif odd_matrix is not None:
        raise ValueError(f"side {side} is a power of two and takes no odd factor")
    return r


def rotate_rows(float[:, ::1] rows, odd_matrix=None, bint transpose=False):
    """Every row v of rows -> H v (or H^T v), in place; H the rotation of a side of rows'
    width (rbe_code_rotate)."""
    cdef list keep = []
    cdef rbe_rotation r = _rotation(rows.shape[1], odd_matrix, keep)
    cdef int64_t i
    with nogil:
        for i in range(rows.shape[0]):
            rbe_code_rotate(&r, &rows[i, 0], transpose)


@cython.auto_pickle(False)      # it holds pointers into its own arrays
cdef class CodePlan:
    """The products of a code layer (rbe_code_plan in rbe/code.h): rbe.code builds one per
    layer. Every size is checked here; the plan keeps references to the arrays it reads, and
    reads the codes in place (they must not be resized)."""
    cdef rbe_code_plan plan
    cdef object _keep
    cdef readonly int64_t in_padded, out_padded, groups

    def __init__(self, int64_t in_features, int64_t out_features, int bits, int state_bits,
                 const uint8_t[:, :, ::1] codes, in_signs, out_signs, in_odd_matrix=None,
                 out_odd_matrix=None):
        _check_trellis(bits, state_bits)
        cdef rbe_code_plan *p = &self.plan
        p.tile_rows, p.tile_cols = codes.shape[0], codes.shape[1]
        if p.tile_rows < 1 or p.tile_cols < 1 or codes.shape[2] != 32 * bits:
            raise ValueError(f"codes must have shape (tile rows, tile columns, {32 * bits}), "
                             f"got {(codes.shape[0], codes.shape[1], codes.shape[2])}")
        p.in_padded, p.out_padded = RBE_CODE_TILE * p.tile_cols, RBE_CODE_TILE * p.tile_rows
        if not 0 < in_features <= p.in_padded or not 0 < out_features <= p.out_padded:
            raise ValueError(f"layer ({out_features}, {in_features}) does not fit the codes' "
                             f"rotated sides ({p.out_padded}, {p.in_padded})")
        keep = [codes]
        p.in_rotation = _rotation(p.in_padded, in_odd_matrix, keep)
        p.out_rotation = _rotation(p.out_padded, out_odd_matrix, keep)
        cdef const float[::1] s_in = np.array(in_signs, dtype=np.float32).ravel()
        cdef const float[::1] s_out = np.array(out_signs, dtype=np.float32).ravel()
        if s_in.shape[0] != p.in_padded or s_out.shape[0] != p.out_padded:
            raise ValueError(f"signs must have {p.in_padded} and {p.out_padded} entries")
        keep += [s_in, s_out]
        p.in_features, p.out_features = in_features, out_features
        p.groups = (p.tile_rows + RBE_CODE_LANES - 1) // RBE_CODE_LANES
        p.bits, p.state_bits = bits, state_bits
        p.codes, p.in_signs, p.out_signs = &codes[0, 0, 0], &s_in[0], &s_out[0]
        self._keep = keep
        self.in_padded, self.out_padded, self.groups = p.in_padded, p.out_padded, p.groups

    cdef int64_t _chunk(self, int64_t batch, int threads):
        """Rows of x per product item: at most RBE_CODE_GEMM_ROWS, the batch cut into equal
        chunks, and enough items for every thread twice (chunks of at least 8 rows)."""
        cdef int64_t chunks = max((batch + RBE_CODE_GEMM_ROWS - 1) // RBE_CODE_GEMM_ROWS,
                                  min((2 * threads + self.groups - 1) // self.groups,
                                      (batch + 7) // 8))
        return (batch + chunks - 1) // chunks

    def forward(self, x, factor, bias=None, out=None):
        """y = W x + b for x of shape (in_features,) or (batch, in_features), C-contiguous
        float32 or float64 (computed in float32, returned in x's type), into ``out`` or a new
        array; W the codes times the row factors (out_padded floats: each row's scale /
        147.8), read as they are at each call. Runs on the chosen SIMD path and rbe's thread
        count; raises ValueError when x or the result holds NaN or inf, or x values beyond
        float32's range."""
        cdef rbe_code_plan *p = &self.plan
        out = _forward_output(x, out, p.in_features, p.out_features, (np.float32, np.float64))
        cdef int64_t nb = x.size // p.in_features
        cdef const float[::1] f = factor
        if f.shape[0] != p.out_padded:
            raise ValueError(f"factor must have {p.out_padded} entries, got {f.shape[0]}")
        cdef rbe_code_forward_job job
        job.bias = _bias_pointer(bias, p.out_features)
        cdef int threads = 1 if p.out_padded * p.in_padded * nb < RBE_POOL_MIN_WORK \
            else _threads()
        job.plan, job.ops, job.batch = p, _ops(_chosen_simd()), nb
        job.parts = min(p.tile_cols, (2 * threads + p.groups - 1) // p.groups) \
            if nb == 1 and threads > 1 else 1
        job.chunk = self._chunk(nb, threads)
        job.f64 = x.dtype == np.float64
        cdef float[::1] xr = workspace("code.xr", nb * p.in_padded, np.float32)
        cdef float[::1] raw = workspace("code.raw", job.parts * nb * p.groups * RBE_CODE_GROUP,
                                        np.float32)
        cdef float[::1] yr = workspace("code.yr", nb * p.out_padded, np.float32)
        cdef const unsigned char[::1] x_bytes = x.reshape(-1).view(np.uint8)
        cdef unsigned char[::1] y_bytes = out.reshape(-1).view(np.uint8)
        job.x, job.y, job.factor = &x_bytes[0], &y_bytes[0], &f[0]
        job.xr, job.raw, job.yr = &xr[0], &raw[0], &yr[0]
        cdef int status
        with nogil:
            status = rbe_code_forward(&job, threads)
        _check_plan_status(status)
        return out

    def decode(self, int64_t group, int64_t tj0, int64_t tj1, float[:, ::1] out):
        """The centred values of the group's rows (128, fewer in the last group) x tile columns
        tj0 .. tj1 - 1 into out (rows x 16 (tj1 - tj0))."""
        cdef rbe_code_plan *p = &self.plan
        if not 0 <= group < p.groups or not 0 <= tj0 < tj1 <= p.tile_cols:
            raise ValueError(f"group {group} or tile columns {tj0} .. {tj1} outside the codes")
        cdef int64_t rows = min(RBE_CODE_GROUP, p.out_padded - group * RBE_CODE_GROUP)
        if out.shape[0] != rows or out.shape[1] != RBE_CODE_TILE * (tj1 - tj0):
            raise ValueError(f"out must have shape ({rows}, {RBE_CODE_TILE * (tj1 - tj0)})")
        with nogil:
            rbe_code_decode_group(p, group, tj0, tj1, &out[0, 0], out.shape[1])
