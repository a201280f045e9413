"""PyTorch modules over rbe layers: :class:`RBELinear`, :func:`compress`, and whole-model files
(:func:`save`, :func:`load`).

Import explicitly (``import rbe.torch``); ``import rbe`` never imports PyTorch. Needs the
``torch`` extra (``pip install "rbe[torch]"``).

An :class:`RBELinear` wraps an rbe layer (``rbe.FusedLinear``: seed blocks, or
``rbe.HybridLinear``: hybrid blocks). Its parameters and buffers are views of the layer's own
arrays (buffers in dtypes every torch.distributed backend broadcasts), so a torch optimiser
updates the layer in place and reading a buffer gives the layer's current state. Forward and
backward are the custom operators ``torch.ops.rbe.linear`` and ``torch.ops.rbe.linear_backward``
(single nodes for ``torch.compile``, ``torch.export`` and ``torch.jit.trace``; eager calls run
their implementations without the dispatcher). Computation is on the CPU in float32 (bfloat16
and float16 inputs under ``torch.autocast``).

Derived state (the fixed-point ``hi`` words of seed blocks, the state transitions and hybrid
position moves decided from the gradient statistics) is refreshed by the layer's
``after_step()``. It runs right after every step of a torch optimiser that holds the module's
parameters (a global optimiser step hook, which first sums the statistics across processes when
torch.distributed is initialised), and before the next eager forward or ``state_dict()``
whenever a parameter's version counter has moved (any other in-place torch update). A written
buffer rebuilds the layer from the module's tensors, validated. Changes that bypass both (writes
through ``.data`` or through the numpy arrays) need an explicit :meth:`RBELinear.sync`.

:func:`save` writes a model's rbe layers (rbe's checked format, one entry per module) and its
other tensors to one safetensors file; :func:`load` rebuilds the model from it into a skeleton
(the ``meta`` device will do) without encoding or allocating a dense weight.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import os
import threading
import weakref
from collections.abc import Iterable, Mapping
from typing import Callable, NamedTuple

import numpy as np

try:
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.autograd.function import once_differentiable
    from torch.optim.optimizer import register_optimizer_step_post_hook
except ImportError as exc:   # pragma: no cover - exercised only without torch
    raise ImportError('rbe.torch needs PyTorch: pip install "rbe[torch]"') from exc

from tqdm.auto import tqdm

from . import _core
from .calibration import InputMoments
from .code import CodeLinear, stored_scale
from .fused import FusedLinear
from .hybrid import HybridLinear
from .io import ModelTensor, layer_from_arrays, layer_kinds, load_model, model_entries

KINDS = ("fused", "hybrid", "code")
#: Options of CodeLinear that RBELinear and compress take with kind "code" (compress also takes
#: the encoder's: calibration, damping and seed).
_CODE_OPTIONS = ("bits", "state_bits")
_CODE_ENCODER_OPTIONS = ("calibration", "damping", "seed")
_EXTRA_STATE = "_extra_state"
_LOW_PRECISION = (torch.bfloat16, torch.float16)
#: Names that state dicts of earlier versions hold besides the current ones (still loaded).
_EARLIER_NAMES = {"fused_linear": {"lo"}}
#: Buffers that copy a config field (the config in the extra state has it too): optional in a
#: state dict.
_CONFIG_BUFFERS = {"code_linear": {"seed"}}


def _check_kind(kind: str, options: dict, code_options: tuple = _CODE_OPTIONS) -> None:
    """``kind`` is one of KINDS, and the options are that kind's: those of HybridLinear with
    kind "hybrid" (checked by it), ``code_options`` with kind "code", none with "fused"."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "code" and set(options) - set(code_options):
        raise ValueError(f"options {sorted(set(options) - set(code_options))} do not apply to "
                         f"kind='code' (it takes {', '.join(code_options)})")
    if kind == "fused" and options:
        raise ValueError(f"options {sorted(options)} do not apply to kind='fused'")


def _kind_name(layer) -> str:
    """The rbe.io entry kind of a layer ("hybrid_linear", "fused_linear", "code_linear")."""
    for name, cls in layer_kinds().items():
        if isinstance(layer, cls):
            return name
    raise ValueError(f"{type(layer).__name__} is not an rbe layer (FusedLinear, HybridLinear "
                     "or CodeLinear)")


# -- the layer's state as torch tensors --------------------------------------------------------

def _writable(frozen: np.ndarray) -> np.ndarray:
    """A writable array over the memory of a read-only layer array (a view of writable memory,
    as ``rbe.hybrid._frozen`` and ``rbe.CodeLinear`` keep theirs), of its shape."""
    owner = frozen.base
    if not (isinstance(owner, np.ndarray) and owner.flags.writeable and owner.flags.c_contiguous
            and frozen.flags.c_contiguous and owner.dtype == frozen.dtype
            and owner.size == frozen.size and owner.ctypes.data == frozen.ctypes.data):
        raise ValueError("the layer's array is not backed by writable memory")
    return owner.reshape(frozen.shape)


def _live_buffers(layer) -> dict:
    """The layer's stored arrays that are not parameters, as views of the layer's own memory in
    dtypes every torch.distributed backend broadcasts (gloo and NCCL have no 16-bit or
    unsigned 64-bit integers): seed words as int64, hybrid positions as their two bytes.
    Only per-block counts, which the layer keeps as offsets, and a code layer's seed are
    derived copies."""
    if isinstance(layer, CodeLinear):
        # the seed of the rotations' signs, in config, as a buffer too: processes that built
        # their layers with other seeds get rank 0's with its codes
        return {"codes": _writable(layer.codes), "seed": np.array([layer.seed], np.int64)}
    if isinstance(layer, FusedLinear):
        # The lo words are the r and theta parameters (float32 views); not a buffer too.
        buffers = {"hi": layer.seeds["hi"].view(np.int64)}
        if not layer.trains_affine:
            buffers["alpha"], buffers["beta"] = layer.alpha, layer.beta
        return buffers
    # Transforms and counts even where one transform or one k would do (rbe.save stores them
    # in the config then): the buffers' shapes then depend on the block grid and the number of
    # coefficients only, so that processes whose layers differ in structure (compress() of
    # other weights) still hold the same buffers for DDP to broadcast.
    return {"index": _writable(layer.index).view(np.uint8).reshape(-1, 2),
            "transform": _writable(layer.transform), "counts": np.diff(layer.offsets)}


def _stored_form(kind: str, config: dict, arrays: dict) -> tuple[dict, dict]:
    """The config and arrays of rbe's stored form (``layer._state()``, as ``rbe.load`` checks
    them) from the module's tensors, or from those of state dicts of earlier versions."""
    arrays = dict(arrays)
    if kind == "code_linear":
        if not isinstance(config, dict):
            return config, arrays
        config = dict(config)
        if "scale" in arrays:       # the float32 training scales
            arrays["scale"], config["exponent"] = stored_scale(arrays["scale"])
        seed = arrays.pop("seed", None)
        if seed is not None:
            if seed.shape != (1,) or seed.dtype != np.int64:
                raise ValueError(f"seed must hold one int64, got {seed.dtype} {seed.shape}")
            config["seed"] = int(seed[0])
        return config, arrays
    if kind == "fused_linear":
        if "r" in arrays and "theta" in arrays:     # the float32 halves of the lo words
            halves = np.stack([arrays.pop("theta"), arrays.pop("r")], axis=-1)
            arrays["lo"] = np.ascontiguousarray(halves.astype("<f4")).view("<u8")[..., 0]
        for name in ("hi", "lo"):
            if name in arrays and arrays[name].dtype == np.int64:
                arrays[name] = arrays[name].view(np.uint64)
        return config, arrays
    if isinstance(config, dict):        # the tensors, where present, give these per block
        config = dict(config)
        if "transform" in arrays:
            config.pop("transform", None)
        if "counts" in arrays:
            config.pop("k", None)
    index = arrays.get("index")
    if index is not None and index.dtype == np.uint8 and index.ndim == 2:
        if index.shape[1:] != (2,):
            raise ValueError(f"index must hold two bytes per position, got shape {index.shape}")
        index = np.ascontiguousarray(index).view(np.uint16).reshape(-1)
        block = config.get("block") if isinstance(config, dict) else None
        if isinstance(block, list) and len(block) == 2 and np.prod(block) <= 256:
            if index.size and index.max() > 255:        # stored as one byte per position
                raise ValueError("index holds positions beyond the block")
            index = index.astype(np.uint8)
        arrays["index"] = index
    counts = arrays.get("counts")
    if counts is not None and counts.dtype == np.int64:
        if counts.size and not 0 <= counts.min() <= counts.max() <= np.iinfo(np.uint16).max:
            raise ValueError("counts must lie in [0, 65535]")
        arrays["counts"] = counts.astype(np.uint16)
    return config, arrays


def _layer_from_state(kind: str, config: dict, tensors: dict):
    """A new layer from the module's tensors (copied), with the checks of ``rbe.load``."""
    arrays = {name: t.detach().cpu().contiguous().numpy() for name, t in tensors.items()}
    return layer_from_arrays(kind, *_stored_form(kind, config, arrays))


def _static_config(layer) -> dict:
    """The layer's configuration with the step count at 0 (it changes at every step)."""
    config = json.loads(json.dumps(layer._state()[0]))
    if "steps" in config:
        config["steps"] = 0
    return config


class _Spec(NamedTuple):
    """What the operators need besides tensors, parsed from the module's spec string."""

    token: int              #: the module's key in _BINDINGS
    kind: str
    config: dict
    names: tuple            #: names of the state tensors, parameters first
    n_params: int
    out_features: int


@functools.lru_cache(maxsize=1024)
def _parse(spec: str) -> _Spec:
    fields = json.loads(spec)
    return _Spec(fields["token"], fields["kind"], fields["config"], tuple(fields["names"]),
                 fields["n_params"], fields["out_features"])


class _Binding:
    """A layer, the addresses of the tensors sharing its memory, and the lock that serialises
    its backward passes (they write the layer's gradient buffers and statistics)."""

    def __init__(self, layer, pointers: tuple, lock):
        self.layer, self.pointers, self.lock = layer, pointers, lock


#: token -> binding of every live RBELinear (the module holds the binding).
_BINDINGS: weakref.WeakValueDictionary[int, _Binding] = weakref.WeakValueDictionary()
_TOKENS = itertools.count()
#: Layers built from tensors that are not a live module's (e.g. an exported program loaded in
#: another process): spec -> (binding, weak references to the tensors, their versions).
_REBUILT: dict = {}
_MAX_REBUILT = 64


def _binding(state: list, spec: str) -> _Binding:
    """The layer computing with ``state``: the live module's, or one rebuilt from the tensors."""
    parsed = _parse(spec)
    pointers = tuple(t.data_ptr() for t in state)
    bound = _BINDINGS.get(parsed.token)
    if bound is not None and bound.pointers == pointers:
        return bound
    versions = tuple(t._version for t in state)
    cached = _REBUILT.get(spec)
    if cached is not None:
        bound, refs, seen = cached
        if seen == versions and all(r() is t for r, t in zip(refs, state)):
            return bound
    layer = _layer_from_state(parsed.kind, parsed.config, dict(zip(parsed.names, state)))
    bound = _Binding(layer, pointers, threading.Lock())
    if len(_REBUILT) >= _MAX_REBUILT:
        _REBUILT.clear()
    _REBUILT[spec] = (bound, [weakref.ref(t) for t in state], versions)
    return bound


# -- operators ---------------------------------------------------------------------------------

def _torch_threads():
    """rbe's kernels use torch's intra-op thread count (``torch.set_num_threads``) unless rbe's
    was chosen (``rbe.set_num_threads``, ``rbe.threads``): one setting sizes the whole model."""
    if _core.num_threads_set():
        return contextlib.nullcontext()
    return _core.threads(min(torch.get_num_threads(), _core.max_threads()))


def _forward_rows(layer, x: torch.Tensor, out_features: int) -> torch.Tensor:
    """The layer's forward on x (..., in_features), as a tensor (..., out_features)."""
    rows = x.reshape(-1, x.shape[-1])
    out_shape = x.shape[:-1] + (out_features,)
    if rows.shape[0] == 0:
        return x.new_zeros(out_shape)
    with _torch_threads():
        y = layer.forward(rows.contiguous().numpy())
    return torch.from_numpy(y).reshape(out_shape)


def _linear_impl(x: torch.Tensor, state: list[torch.Tensor], spec: str) -> torch.Tensor:
    """y = x W^T + b of the rbe layer whose state (parameters, then buffers) is ``state``."""
    return _forward_rows(_binding(state, spec).layer, x, _parse(spec).out_features)


_linear = torch.library.custom_op("rbe::linear", _linear_impl, mutates_args=())


@_linear.register_fake
def _linear_fake(x, state, spec):
    return x.new_empty(x.shape[:-1] + (_parse(spec).out_features,))


def _backward_rows(bound: _Binding, parsed: _Spec, x: torch.Tensor, grad: torch.Tensor,
                   shapes: list) -> list[torch.Tensor]:
    """[dx, gradient of each parameter (of the given shapes)] from the bound layer's
    backward, which also adds to its step statistics (seed-block transition sums, hybrid grow
    gradients) for the optimiser step hook."""
    rows = x.reshape(-1, x.shape[-1])
    if rows.shape[0] == 0:
        return [torch.zeros_like(x), *(torch.zeros(shape) for shape in shapes)]
    dy = grad.reshape(-1, parsed.out_features).to(torch.float32).contiguous()
    # the layer's grads dict is shared state: copied out under the lock
    with bound.lock, _torch_threads():
        dx = bound.layer.backward(rows.contiguous().numpy(), dy.numpy())
        grads = [torch.from_numpy(np.array(bound.layer.grads[name], np.float32)).reshape(shape)
                 for name, shape in zip(parsed.names, shapes)]
    return [torch.from_numpy(dx).reshape(x.shape), *grads]


def _linear_backward_impl(x: torch.Tensor, grad: torch.Tensor, state: list[torch.Tensor],
                          spec: str) -> list[torch.Tensor]:
    """[dx, gradient of each parameter] of the rbe layer whose state is ``state``."""
    parsed = _parse(spec)
    return _backward_rows(_binding(state, spec), parsed, x, grad,
                          [p.shape for p in state[:parsed.n_params]])


_linear_backward = torch.library.custom_op("rbe::linear_backward", _linear_backward_impl,
                                           mutates_args=())


@_linear_backward.register_fake
def _linear_backward_fake(x, grad, state, spec):
    return [x.new_empty(x.shape), *(p.new_empty(p.shape) for p in state[:_parse(spec).n_params])]


def _setup_context(ctx, inputs, output) -> None:
    x, state, spec = inputs
    ctx.spec = spec
    ctx.save_for_backward(x, *state)


def _linear_grad(ctx, grad):
    x, *state = ctx.saved_tensors
    dx, *grads = torch.ops.rbe.linear_backward(x, grad, state, ctx.spec)
    return dx, grads + [None] * (len(state) - len(grads)), None


_linear.register_autograd(_linear_grad, setup_context=_setup_context)


class _EagerLinear(torch.autograd.Function):
    """The operators' autograd for eager calls of a module, on its bound layer and without the
    dispatcher: a custom operator with autograd costs about 0.2 ms more per call, as much as a
    small layer's product. The parameters are inputs only so that autograd routes their
    gradients; the layer reads the same memory itself."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: _Binding, spec: str, *params: torch.Tensor):
        ctx.bound, ctx.spec, ctx.shapes = bound, spec, [p.shape for p in params]
        ctx.save_for_backward(x)
        return _forward_rows(bound.layer, x, _parse(spec).out_features)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        dx, *grads = _backward_rows(ctx.bound, _parse(ctx.spec), x, grad, ctx.shapes)
        return dx, None, None, *grads


# -- the optimiser step hook -------------------------------------------------------------------

class _Owner:
    """Weak reference from a parameter to its RBELinear, for the optimiser step hook.

    Copies and pickles of the parameter get an empty one; the copy's module sets its own.
    """

    def __init__(self, module: RBELinear | None = None):
        self._ref = None if module is None else weakref.ref(module)

    def __call__(self) -> RBELinear | None:
        return None if self._ref is None else self._ref()

    def __reduce__(self):
        return (_Owner, ())


_NO_OWNER = _Owner()


def _after_optimizer_step(optimizer, args, kwargs) -> None:
    """Refresh every RBELinear whose parameters the optimiser has just updated.

    Some optimisers (e.g. ``Adam(fused=True)``) update without moving the version counters, so
    the step itself is the signal. Modules are visited in the order of the optimiser's
    parameters, the same in every process, which the all-reduce of the statistics relies on.
    """
    modules = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            module = getattr(p, "_rbe_owner", _NO_OWNER)()
            if module is not None:
                modules[id(module)] = module
    for module in modules.values():
        module._reduce_step_statistics()
        module.sync(force=True)


register_optimizer_step_post_hook(_after_optimizer_step)


class RBELinear(nn.Module):
    """``nn.Linear`` replacement computing with compressed blocks: y = x W^T + b.

    Parameters
    ----------
    in_features, out_features : int
        Layer size.
    kind : {"hybrid", "fused", "code"}
        "hybrid": ``rbe.HybridLinear`` (trainable coefficients of a smooth basis plus k transform
        coefficients per block). "fused": ``rbe.FusedLinear`` with its defaults (one 16-byte
        seed and one float32 scale per block, centred blocks, fan-in scaled initialisation).
        "code": ``rbe.CodeLinear`` with random codes (frozen; the row scales and the bias
        train); code layers for a trained model come from :func:`compress`.
    block : (int, int)
        Block shape (rows = outputs, columns = inputs); not used by "code" (16 x 16 tiles).
    k, transform :
        Hybrid layers only: coefficients per block and their transform ("dct" or "dwt").
    bias : bool
        Add a trainable bias.
    seed : int or None
        Seed of the random initialisation.
    **options :
        Hybrid layers: ``budget``, ``ratio``, ``basis``, ``rank``, ``precision`` and the
        ``regrow_*`` settings of ``rbe.HybridLinear`` (positions move from the optimiser step
        hook, through ``after_step``). Code layers: ``bits`` and ``state_bits``.

    Attributes
    ----------
    process_group : torch.distributed ProcessGroup or None
        The processes whose step statistics (seed-block transition sums, hybrid grow
        gradients) are summed before each decision, when torch.distributed is initialised;
        None: the default group.

    Notes
    -----
    Inputs are CPU tensors of shape (..., in_features), float32 (bfloat16 or float16 under
    ``torch.autocast("cpu")``). Forward and backward are the custom operators
    ``torch.ops.rbe.linear`` and ``torch.ops.rbe.linear_backward``, so ``torch.compile``
    and ``torch.export`` trace them as single nodes. Several threads may call the same module
    concurrently; backward passes are serialised by a per-module lock. The layer's
    ``after_step()`` runs after every torch optimiser step and after any other in-place update
    of a parameter (see the module docstring).
    """

    process_group = None

    def __init__(self, in_features: int, out_features: int, kind: str = "hybrid",
                 block=(64, 64), k: int | None = None, transform: str = "dct",
                 bias: bool = True, seed: int | None = None, **options):
        super().__init__()
        _check_kind(kind, options)
        if kind == "hybrid":
            layer = HybridLinear(in_features, out_features, block=block, k=k,
                                 transform=transform, bias=bias, seed=seed, **options)
        elif kind == "code":
            layer = CodeLinear(in_features, out_features, bias=bias,
                               seed=0 if seed is None else seed, **options)
        else:
            layer = FusedLinear(in_features, out_features, block=block, bias=bias, seed=seed)
        self._init_binding()
        self._attach(layer)

    @classmethod
    def from_layer(cls, layer) -> RBELinear:
        """A module computing with an existing rbe layer (shared, not copied)."""
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module._init_binding()
        module._attach(layer)
        return module

    def _init_binding(self) -> None:
        self._lock = threading.RLock()
        self._token = next(_TOKENS)

    def _attach(self, layer) -> None:
        """Compute with ``layer``: point the parameters and buffers at its arrays.

        Tensors whose shape and dtype do not change keep their identity, so an optimiser (or a
        DistributedDataParallel wrapper) created before ``load_state_dict`` keeps working.
        """
        self._kind = _kind_name(layer)
        params, buffers = layer.parameters(), _live_buffers(layer)
        for table, arrays, make in ((self._parameters, params, nn.Parameter),
                                    (self._buffers, buffers, lambda t: t)):
            for name in [n for n in table if n not in arrays and n != "bias"]:
                del table[name]
            for name, array in arrays.items():
                tensor = torch.from_numpy(array)
                old = table.get(name)
                if old is not None and old.shape == tensor.shape and old.dtype == tensor.dtype:
                    old.data = tensor
                else:
                    table[name] = make(tensor)
        for p in self._parameters.values():
            if p is not None:
                p._rbe_owner = _Owner(self)
        if "bias" not in params:
            self._parameters["bias"] = None
        self._layer = layer
        self._in, self._out = layer.in_features, layer.out_features
        self._state_names = (*(n for n, p in self._parameters.items() if p is not None),
                             *self._buffers)
        self._spec = json.dumps({"token": self._token, "kind": self._kind,
                                 "config": _static_config(layer),
                                 "names": list(self._state_names), "n_params": len(params),
                                 "out_features": self._out}, sort_keys=True)
        # The same list as _state(), kept for the eager calls' checks (traced calls use
        # _state(), which tracers follow through the module's tables).
        self._tensors = self._state()
        self._binding = _Binding(layer, tuple(t.data_ptr() for t in self._tensors), self._lock)
        _BINDINGS[self._token] = self._binding
        self._versions = tuple([t._version for t in self._tensors])

    def _state(self) -> list:
        """Parameters, then buffers: the operators' view of the layer."""
        return [*(p for p in self._parameters.values() if p is not None),
                *self._buffers.values()]

    in_features = property(lambda self: self._in)
    out_features = property(lambda self: self._out)
    kind = property(lambda self: self._kind.split("_")[0])

    @property
    def layer(self):
        """The rbe layer, with pending updates applied (e.g. for ``rbe.save``)."""
        self.sync()
        return self._layer

    def __getstate__(self) -> dict:
        """Pickle and deepcopy the layer through its saved state, so that the copy's
        parameters share memory with the copy's layer again."""
        self.sync()
        state = self.__dict__.copy()
        for name in ("_lock", "_binding", "_token", "_tensors"):
            del state[name]
        state["_buffers"] = {}      # rebuilt from the layer
        state["_layer"] = (self._kind, *self._layer._state())
        return state

    def __setstate__(self, state: dict) -> None:
        kind, config, arrays = state.pop("_layer")
        super().__setstate__(state)
        self._init_binding()
        self._attach(layer_kinds()[kind]._from_state(config, arrays))

    def _apply(self, fn, recurse=True):
        """Allow only conversions that keep every tensor as it is (``.float()``, ``.cpu()``).

        Any other (``.double()``, ``.cuda()``, ``share_memory()``...) would move the
        parameters away from the layer's arrays, which the kernels keep computing with.
        """
        for name, tensor in [*self._parameters.items(), *self._buffers.items()]:
            if tensor is None:
                continue
            # fn may work in place (share_memory_): try it on a stand-in of the same kind.
            probe = tensor.detach().new_empty(1)
            before = (probe.dtype, probe.device, probe.data_ptr())
            converted = fn(probe)
            if (converted.dtype, converted.device, converted.data_ptr()) != before:
                raise ValueError(f"RBELinear keeps its float32 CPU parameters in the rbe layer's "
                                 f"arrays; converting or moving them (.double(), .cuda(), "
                                 f"share_memory()...) is not supported (tried on {name!r})")
        return self

    # -- refreshing derived state -----------------------------------------------------------

    def sync(self, force: bool = False) -> list:
        """Bring the layer up to date with in-place writes to its tensors.

        A written buffer (a load into it, DistributedDataParallel's start-up broadcast)
        rebuilds the layer from the module's tensors, validated like ``rbe.load``; a written
        parameter runs the layer's ``after_step()``. With ``force``, ``after_step()`` runs
        unconditionally (after changing parameters through ``.data`` or the layer's numpy
        arrays; the optimiser step hook calls this). Returns the module's tensors
        (parameters, then buffers).
        """
        state = self._tensors
        versions = tuple([t._version for t in state])
        if not force and versions == self._versions:
            return state    # the common case, without waiting for a backward holding the lock
        with self._lock:
            n_params = len(self._state_names) - len(self._buffers)
            buffers_written = versions[n_params:] != self._versions[n_params:]
            if buffers_written:
                self._attach(_layer_from_state(self._kind, self._layer._state()[0],
                                               dict(zip(self._state_names, state))))
            elif force or versions != self._versions:
                self._layer.after_step()
                self._versions = versions
        return self._tensors

    def _reduce_step_statistics(self) -> None:
        """Sum the statistics of the coming decision across processes (torch.distributed)."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        group = self.process_group
        if dist.get_world_size(group) < 2:
            return
        for array in self._layer.step_statistics():
            dist.all_reduce(torch.from_numpy(array), group=group)

    # -- products ------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x W^T + b for a CPU tensor x of shape (..., in_features): float32, or bfloat16 /
        float16 under ``torch.autocast("cpu")`` (computed in float32, returned in the
        autocast dtype)."""
        out_dtype = self._check_input(x)
        if x.dtype != torch.float32:
            x = x.float()
        if torch.compiler.is_compiling() or torch.jit.is_tracing() \
                or type(x) is not torch.Tensor:
            y = torch.ops.rbe.linear(x, self._state(), self._spec)
        else:
            state = self.sync()
            if torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad
                                                                   for t in state)):
                y = _EagerLinear.apply(x, self._binding, self._spec,
                                       *state[:len(state) - len(self._buffers)])
            else:   # inference: skip the dispatcher and the autograd node
                y = _forward_rows(self._layer, x.detach(), self._out)
        return y if out_dtype is None else y.to(out_dtype)

    def _check_input(self, x) -> torch.dtype | None:
        """Check x; return the autocast dtype of the output, if any."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if x.device.type != "cpu":
            raise ValueError(f"rbe layers compute on the CPU; got a tensor on {x.device} "
                             "(move it with .cpu())")
        autocast = torch.is_autocast_enabled("cpu")
        if x.dtype != torch.float32 and not (autocast and x.dtype in _LOW_PRECISION):
            raise ValueError(f"input must be float32 (or bfloat16/float16 under "
                             f"torch.autocast('cpu')), got {x.dtype}")
        if x.dim() == 0 or x.shape[-1] != self._in:
            raise ValueError(f"input must have shape (..., {self._in}), "
                             f"got {tuple(x.shape)}")
        return torch.get_autocast_dtype("cpu") if autocast else None

    # -- state_dict ----------------------------------------------------------------------------

    def get_extra_state(self) -> dict:
        return {"kind": self._kind, "config": json.loads(json.dumps(self._layer._state()[0]))}

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        self.sync()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        """Rebuild the layer from the saved arrays (validated like ``rbe.load``).

        The stored structure (block indices, transforms, states) may differ from this module's,
        so the layer is rebuilt rather than copied into.
        """
        mine = {key[len(prefix):] for key in state_dict
                if key.startswith(prefix) and "." not in key[len(prefix):]}
        extra = state_dict.get(prefix + _EXTRA_STATE)
        # A state of another kind (e.g. seed blocks into a hybrid module) has other names.
        if not isinstance(extra, dict) or extra.get("kind") == self._kind:
            expected = [*self._state_names, _EXTRA_STATE]
            missing = [prefix + name for name in expected if name not in mine]
            # Arrays a layer stores only for some contents (hybrid: mixed transforms, ragged
            # blocks) are expected when present.
            optional = set(getattr(type(self._layer), "OPTIONAL_STATE", ()))
            optional |= _EARLIER_NAMES.get(self._kind, set()) | _CONFIG_BUFFERS.get(self._kind,
                                                                                  set())
            missing = [key for key in missing if key[len(prefix):] not in optional]
            if strict:
                unexpected_keys.extend(prefix + n for n in sorted(mine - set(expected) - optional))
            if missing:
                missing_keys.extend(missing)
                return
        try:
            tensors = {name: state_dict[prefix + name] for name in mine if name != _EXTRA_STATE}
            layer = _layer_from_state(extra["kind"], extra["config"], tensors)
        except (KeyError, TypeError, ValueError) as exc:
            error_msgs.append(f"{prefix or 'RBELinear'}: cannot rebuild the rbe layer ({exc!r})")
            return
        with self._lock:
            self._attach(layer)

    def to_dense(self) -> torch.Tensor:
        """The dense weight (out_features, in_features)."""
        return torch.from_numpy(np.asarray(self.layer.to_dense(), np.float32))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"kind={self.kind!r}, block={tuple(self._layer.block)}, "
                f"bias={self.bias is not None}, "
                f"ratio={self._layer.compression_ratio:.1f}")


#: The layout ``compress`` gives a kind when the call does not choose it. Hybrid: the best one
#: measured, at equal bytes, on the MiniLM weights and on the quality benchmark's MLPs
#: (docs/torch.md, "compress").
COMPRESS_DEFAULTS = {"hybrid": {"block": (16, 16), "basis": False, "precision": "float16"},
                     "fused": {"block": (64, 64)}, "code": {}}


def compress(model: nn.Module, kind: str = "hybrid", block: tuple[int, int] | None = None,
             k: int | None = None, transform: str = "adaptive",
             filter: Callable[[str, nn.Module], bool] | None = None,
             **options) -> nn.Module:
    """Replace the model's ``nn.Linear`` layers by :class:`RBELinear`, in place.

    Parameters
    ----------
    model : nn.Module
        On the CPU. A model that *is* an ``nn.Linear`` cannot be changed in place: its
        replacement is returned.
    kind : {"hybrid", "fused", "code"}
        "hybrid" encodes every weight with ``rbe.HybridLinear.from_dense``. "code" codes every
        weight with ``rbe.CodeLinear.from_dense`` (pretrained weights at 2-4 bits per weight,
        docs/code.md). "fused" makes fresh seed-block layers of the same shapes, for training
        from scratch: seed blocks cannot encode a trained matrix, so the original weights are
        discarded.
    block, k, transform :
        Block shape (clamped to the layer size; by default the kind's ``COMPRESS_DEFAULTS``)
        and, for "hybrid", the encoder's k and transform ("dct", "dwt" or "adaptive"). Not
        used by "code".
    filter : callable(name, module) -> bool, optional
        Replace only the layers it accepts (names as in ``model.named_modules()``).
    **options :
        For "hybrid", ``budget`` or ``ratio`` (per layer, bias included, instead of k),
        ``basis``, ``rank`` and ``precision`` of ``rbe.HybridLinear.from_dense``; ``basis``
        and ``precision`` default to ``COMPRESS_DEFAULTS``. For "code", ``bits`` (default
        3), ``state_bits``, ``damping`` and ``seed`` of ``rbe.CodeLinear.from_dense``, and
        ``calibration``: sample inputs of the model (an iterable of batches, as
        :func:`calibrate` takes them) or the moments :func:`calibrate` returned; with it every
        layer minimises the error of its outputs on those inputs and corrects its bias.

    Any of ``block``, ``k`` and the options but ``calibration`` may be a callable(name,
    module) returning the value for each layer, e.g. ``ratio=lambda name, m: 4 if
    m.in_features == m.out_features else 8``.

    Returns
    -------
    The model (or the replacement of a bare ``nn.Linear``).
    """
    _check_kind(kind, options, _CODE_OPTIONS + _CODE_ENCODER_OPTIONS)

    def accepts(name, m):
        return isinstance(m, nn.Linear) and (filter is None or filter(name, m))

    moments = {}
    if kind == "code":
        moments = _layer_moments(model, options.pop("calibration", None), accepts)
    options = {**COMPRESS_DEFAULTS[kind], **options}
    if kind == "hybrid":
        options.update(k=k, transform=transform)
    if block is not None and kind != "code":
        options["block"] = block
    if accepts("", model):
        return _replacement("", model, kind, options, moments.get(""))
    # A layer used at several places is replaced once, by the same module everywhere.
    places = [(name, m) for name, m in model.named_modules(remove_duplicate=False)
              if name and accepts(name, m)]
    first_places: dict = {}
    for name, linear in places:
        first_places.setdefault(id(linear), (name, linear))
    replacements = {}
    for name, linear in tqdm(list(first_places.values()), desc="rbe.compress", unit="layer",
                             disable=None):
        replacements[id(linear)] = _replacement(name, linear, kind, options, moments.get(name))
    _install(model, replacements)
    return model


def _install(model: nn.Module, replacements: dict[int, nn.Module]) -> None:
    """Put ``replacements[id(module)]`` at every place of each replaced module."""
    for place, module in list(model.named_modules(remove_duplicate=False)):
        if place and id(module) in replacements:
            parent, _, attr = place.rpartition(".")
            setattr(model.get_submodule(parent), attr, replacements[id(module)])


def _replacement(name: str, linear: nn.Linear, kind: str, options: dict,
                 moments: InputMoments | None) -> RBELinear:
    if linear.weight.device.type != "cpu":
        raise ValueError(f"rbe layers compute on the CPU; the model is on {linear.weight.device}")
    options = {key: value(name, linear) if callable(value) else value
               for key, value in options.items()}
    if "block" in options:
        block = options["block"]
        options["block"] = (min(block[0], linear.out_features), min(block[1], linear.in_features))
    has_bias = linear.bias is not None
    if kind == "fused":
        return RBELinear(linear.in_features, linear.out_features, kind="fused",
                         block=options["block"], bias=has_bias)
    weight = linear.weight.detach().to(torch.float32).numpy()
    bias = linear.bias.detach().to(torch.float32).numpy() if has_bias else None
    if kind == "code":
        layer = CodeLinear.from_dense(
            weight, bias, hessian=None if moments is None else moments.second_moment,
            input_mean=None if moments is None else moments.mean, progress=False, **options)
    else:
        layer = HybridLinear.from_dense(weight, bias, progress=False, **options)
    return RBELinear.from_layer(layer)


# -- calibration -------------------------------------------------------------------------------

def calibrate(model: nn.Module, batches: Iterable,
              filter: Callable[[str, nn.Module], bool] | None = None,
              progress: bool | None = None) -> dict[str, InputMoments]:
    """The moments of the inputs of the model's ``nn.Linear`` layers over sample inputs.

    Parameters
    ----------
    model : nn.Module
        Run on every batch, in inference mode (its outputs are discarded).
    batches : iterable
        Model inputs: tensors (``model(batch)``), tuples or lists of them
        (``model(*batch)``) or mappings of keyword tensors (``model(**batch)``, as a tokenizer
        returns them). When a mapping holds an ``attention_mask`` of shape (batch, sequence),
        the positions it masks out (padding) are left out of every layer whose input has that
        leading shape.
    filter : callable(name, module) -> bool, optional
        Only the layers it accepts.
    progress : bool, optional
        A progress bar over the batches (default: on a terminal).

    Returns
    -------
    dict
        Module name -> :class:`rbe.calibration.InputMoments` (mean and second moment E[x x^T]
        in float64, and the number of inputs), for every accepted layer the batches reached;
        ``rbe.calibration.save`` writes them to a file for ``rbe compress --calibration``.
    """
    linears = {id(m): (name, m) for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and (filter is None or filter(name, m))}
    sums: dict = {}
    mask: list = [None]

    def hook(module, inputs):
        x = inputs[0].detach()
        if mask[0] is not None and x.dim() == 3 and x.shape[:2] == mask[0].shape:
            x = x[mask[0].bool()]
        x = x.reshape(-1, x.shape[-1]).to(torch.float64)
        total, outer, count = sums.get(id(module), (0, 0, 0))
        sums[id(module)] = (total + x.sum(0), outer + x.T @ x, count + x.shape[0])

    handles = [m.register_forward_pre_hook(hook) for _, m in linears.values()]
    try:
        with torch.inference_mode():
            for batch in tqdm(batches, desc="rbe.calibrate", unit="batch",
                              disable=None if progress is None else not progress):
                if isinstance(batch, Mapping):
                    attention = batch.get("attention_mask")
                    mask[0] = attention if isinstance(attention, torch.Tensor) \
                        and attention.dim() == 2 else None
                    model(**batch)
                else:
                    mask[0] = None
                    model(*batch) if isinstance(batch, (tuple, list)) else model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return {linears[key][0]: InputMoments.accumulate(total.numpy(), outer.numpy(), count)
            for key, (total, outer, count) in sums.items()}


def _layer_moments(model: nn.Module, calibration, accepts) -> dict[str, InputMoments]:
    """Moments by module name from compress's ``calibration`` option: sample inputs (run
    through :func:`calibrate`) or moments; every accepted layer must have its own."""
    if calibration is None:
        return {}
    if isinstance(calibration, Mapping) \
            and all(isinstance(m, InputMoments) for m in calibration.values()):
        moments = dict(calibration)
    else:
        moments = calibrate(model, calibration, filter=accepts)
    names = {id(m): name for name, m in model.named_modules() if accepts(name, m)}
    missing = sorted(name or "(the model)" for name in names.values() if name not in moments)
    if missing:
        raise ValueError(f"calibration has no input moments for layers {missing} (the "
                         "batches did not reach them, or the moments are another model's)")
    return moments


# -- whole-model files ---------------------------------------------------------------------------

def save(model: nn.Module, path: str | os.PathLike) -> None:
    """Write the whole model to one safetensors file.

    The file holds every :class:`RBELinear`'s stored parts and configuration, in the format and
    under the checks of ``rbe.save`` (one entry per module, named by its path in the model), and
    the model's other tensors (its ``state_dict`` and non-persistent buffers; tensors sharing
    memory, such as tied weights, once), with their checksums. :func:`load` rebuilds the model
    from it without encoding anything.
    """
    from safetensors.torch import save_file

    if isinstance(model, RBELinear):
        raise ValueError("the model is a single RBELinear: save its layer with "
                         "rbe.save(path, module.layer)")
    layers, others = _split_state(model)
    objects = sorted(key for key, t in others.items() if not isinstance(t, torch.Tensor))
    if objects:
        raise ValueError(f"the model's state holds objects that are not tensors: {objects}")
    others = _once({**others, **_non_persistent_buffers(model)})
    header, parts = model_entries(layers, {key: _description(t) for key, t in others.items()})
    tensors = {**{key: torch.from_numpy(a) for key, a in parts.items()},
               **{key: t.detach().contiguous() for key, t in others.items()}}
    save_file(tensors, os.fspath(path), metadata={"rbe": header})


def load(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Load a file of :func:`save` into ``model`` and return it.

    ``model`` is built from its configuration; its weights are not needed (a skeleton made
    under ``torch.device("meta")`` works). Each module the file lists (an ``nn.Linear`` of the
    same shape, or an ``RBELinear``) is replaced by an :class:`RBELinear` built directly from the
    stored parts, with the checks of ``rbe.load``: nothing is encoded and no dense weight is
    allocated. The model's other tensors are then assigned (``load_state_dict(assign=True)``),
    and weights the model ties are tied again.

    Raises
    ------
    rbe.FormatError
        If the file is not a valid whole-model file (truncated, corrupted, forged).
    ValueError
        If the model does not match the file: modules that are missing or of another type or
        shape, tensors the model lacks or has but the file does not (named in the message).
    """
    layers, tensors = load_model(path)
    _check_modules(model, layers)
    loaded_modules = {id(model.get_submodule(name)): RBELinear.from_layer(layer)
                      for name, layer in layers.items()}
    _install(model, loaded_modules)
    built = {id(m) for m in loaded_modules.values()}
    places = {name for name, m in model.named_modules(remove_duplicate=False) if id(m) in built}
    ties = [[key for key in keys if key.rpartition(".")[0] not in places]
            for keys in _tied_tensors(model)]
    state = {key: _as_tensor(t) for key, t in tensors.items()}
    try:
        result = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:      # shapes that differ from the model's
        raise ValueError(f"{os.fspath(path)} does not fit the model: {exc}") from None
    buffers = _non_persistent_buffers(model)
    unexpected = [key for key in result.unexpected_keys if key not in buffers]
    for key in set(result.unexpected_keys) & set(buffers):
        _set_tensor(model, key, state[key])
    loaded = set(state) - set(unexpected)
    for keys in ties:
        source = next((key for key in keys if key in loaded), None)
        for key in keys if source is not None else ():
            _set_tensor(model, key, _get_tensor(model, source))
            loaded.add(key)
    missing = [key for key in result.missing_keys
               if key not in loaded and key.rpartition(".")[0] not in places]
    if missing or unexpected:
        raise ValueError(f"{os.fspath(path)} does not fit the model: tensors missing from the "
                         f"file {missing}, tensors the model does not have {unexpected}")
    return model


def _split_state(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """The model's rbe layers by module name (a module used at several places once, under its
    first name) and its ``state_dict`` without the entries of its RBELinear modules."""
    layers = {name: m.layer for name, m in model.named_modules() if isinstance(m, RBELinear)}
    places = {name for name, m in model.named_modules(remove_duplicate=False)
              if isinstance(m, RBELinear)}
    others = {key: t for key, t in model.state_dict().items()
              if key.rpartition(".")[0] not in places}
    return layers, others


def _non_persistent_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Buffers that ``state_dict`` leaves out, which a model built on the meta device lacks."""
    return {f"{name}.{buffer}" if name else buffer: module._buffers[buffer]
            for name, module in model.named_modules()
            for buffer in module._non_persistent_buffers_set
            if module._buffers.get(buffer) is not None}


def _once(tensors: dict) -> dict:
    """The first name of every group of tensors sharing memory (tied weights), which
    safetensors stores once; ``load`` ties them again where the model ties them."""
    seen, kept = set(), {}
    for key, t in tensors.items():
        memory = (t.untyped_storage().data_ptr(), t.storage_offset(), t.dtype, t.shape,
                  t.stride())
        if t.numel() == 0 or memory not in seen:
            seen.add(memory)
            kept[key] = t
    return kept


def _description(t: torch.Tensor) -> dict:
    """dtype (torch's name), shape and sha256 of a tensor's bytes, as the file stores them."""
    data = t.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
    return {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
            "sha256": hashlib.sha256(data).hexdigest()}


def _as_tensor(stored: ModelTensor) -> torch.Tensor:
    """A tensor over the bytes read from the file (not copied)."""
    dtype = getattr(torch, stored.dtype)
    if not stored.data:
        return torch.empty(stored.shape, dtype=dtype)
    return torch.frombuffer(stored.data, dtype=dtype).reshape(stored.shape)


def _check_modules(model: nn.Module, layers: dict) -> None:
    """Every module the file lists is an nn.Linear (or RBELinear) of its layer's shape."""
    problems = []
    for name, layer in layers.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            problems.append(f"the model has no module {name!r}")
            continue
        if not isinstance(module, (nn.Linear, RBELinear)):
            problems.append(f"{name!r} is a {type(module).__name__}, not an nn.Linear")
        elif (module.in_features, module.out_features) != (layer.in_features,
                                                           layer.out_features):
            problems.append(f"{name!r} maps {module.in_features} -> {module.out_features} "
                            f"features, the file's layer {layer.in_features} -> "
                            f"{layer.out_features}")
    if problems:
        raise ValueError("the file's rbe layers do not fit the model: " + "; ".join(problems))


def _tied_tensors(model: nn.Module) -> list[list[str]]:
    """Names of the parameters and buffers that are one tensor at several places."""
    places: dict[int, list[str]] = {}
    for key, t in itertools.chain(model.named_parameters(remove_duplicate=False),
                                  model.named_buffers(remove_duplicate=False)):
        places.setdefault(id(t), []).append(key)
    return [keys for keys in places.values() if len(keys) > 1]


def _get_tensor(model: nn.Module, key: str) -> torch.Tensor:
    module, _, attr = key.rpartition(".")
    return getattr(model.get_submodule(module), attr)


def _set_tensor(model: nn.Module, key: str, tensor: torch.Tensor) -> None:
    """Point the parameter or buffer ``key`` at ``tensor``."""
    path, _, attr = key.rpartition(".")
    module = model.get_submodule(path)
    table = module._parameters if attr in module._parameters else module._buffers
    table[attr] = tensor
