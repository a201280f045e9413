"""PyTorch modules over rbe layers: :class:`RBELinear` and :func:`compress`.

Import explicitly (``import rbe.torch``); ``import rbe`` never imports PyTorch. Needs the
``torch`` extra (``pip install "rbe[torch]"``).

An :class:`RBELinear` wraps an rbe layer (``rbe.FusedLinear``: seed blocks, or
``rbe.HybridLinear``: hybrid blocks). Its ``nn.Parameter`` objects share memory with the layer's
parameter arrays, so a torch optimiser updates the layer in place; forward and backward call the
layer's own kernels through a ``torch.autograd.Function``. Computation is on the CPU in float32.

Derived state (the fixed-point ``hi`` words of seed blocks, the state transitions chosen by the
last backward) is refreshed by the layer's ``after_step()``. It runs right after every step of a
torch optimiser that holds the module's parameters (a global optimiser step hook), and before
the next forward or ``state_dict()`` whenever a parameter's version counter has moved (any
other in-place torch update). Changes that bypass both (writes through ``.data`` or through the
numpy arrays) need an explicit :meth:`RBELinear.sync`.
"""
from __future__ import annotations

import json
import threading
import weakref
from typing import Callable

import numpy as np

try:
    import torch
    from torch import nn
    from torch.autograd.function import once_differentiable
    from torch.optim.optimizer import register_optimizer_step_post_hook
except ImportError as exc:   # pragma: no cover - exercised only without torch
    raise ImportError('rbe.torch needs PyTorch: pip install "rbe[torch]"') from exc

from tqdm.auto import tqdm

from .hybrid import HybridLinear
from .io import _kinds

KINDS = ("fused", "hybrid")
_EXTRA_STATE = "_extra_state"


def _fused_class():
    """rbe.FusedLinear, or a clear error on an rbe built without seed-block layers."""
    cls = _kinds().get("fused_linear")
    if cls is None:
        raise ValueError("kind='fused' needs rbe.FusedLinear, which this rbe does not provide")
    return cls


def _kind_name(layer) -> str:
    """The rbe.io entry kind of a layer ("hybrid_linear", "fused_linear")."""
    for name, cls in _kinds().items():
        if isinstance(layer, cls) and name != "hybrid_matrix":
            return name
    raise ValueError(f"{type(layer).__name__} is not an rbe layer (FusedLinear or HybridLinear)")


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
    the step itself is the signal.
    """
    modules = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            module = getattr(p, "_rbe_owner", _NO_OWNER)()
            if module is not None:
                modules[id(module)] = module
    for module in modules.values():
        module.sync(force=True)


register_optimizer_step_post_hook(_after_optimizer_step)


class _LayerFunction(torch.autograd.Function):
    """y = layer.forward(x); backward gives dx and the parameter gradients of ``layer.backward``.

    The parameters are inputs only so that autograd routes their gradients; the layer reads the
    same memory itself.
    """

    @staticmethod
    def forward(ctx, module: RBELinear, x: torch.Tensor, *params: torch.Tensor):
        ctx.module = module
        ctx.save_for_backward(x)
        return module._product(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        (x,) = ctx.saved_tensors
        dx, grads = ctx.module._backward(x, grad_output)
        return (None, dx, *grads)


class RBELinear(nn.Module):
    """``nn.Linear`` replacement computing with compressed blocks: y = x W^T + b.

    Parameters
    ----------
    in_features, out_features : int
        Layer size.
    kind : {"hybrid", "fused"}
        "hybrid": ``rbe.HybridLinear`` (trainable coefficients of a smooth basis plus k transform
        coefficients per block). "fused": ``rbe.FusedLinear`` with its defaults (one 16-byte
        seed and one float32 scale per block, centred blocks, fan-in scaled initialisation).
    block : (int, int)
        Block shape (rows = outputs, columns = inputs).
    k, transform :
        Hybrid layers only: coefficients per block and their transform ("dct" or "dwt").
    bias : bool
        Add a trainable bias.
    seed : int or None
        Seed of the random initialisation.
    **hybrid_options :
        Hybrid layers only: ``budget``, ``ratio``, ``basis``, ``rank``, ``precision`` and the
        ``regrow_*`` settings of ``rbe.HybridLinear`` (positions move from the optimiser step
        hook, through ``after_step``).

    Notes
    -----
    Inputs are float32 CPU tensors of shape (..., in_features). Several threads may call the
    same module concurrently; backward passes are serialised by a per-module lock. The layer's
    ``after_step()`` runs after every torch optimiser step and after any other in-place update
    of a parameter (see the module docstring).
    """

    def __init__(self, in_features: int, out_features: int, kind: str = "hybrid",
                 block=(64, 64), k: int | None = None, transform: str = "dct",
                 bias: bool = True, seed: int | None = None, **hybrid_options):
        super().__init__()
        if kind == "hybrid":
            layer = HybridLinear(in_features, out_features, block=block, k=k,
                                 transform=transform, bias=bias, seed=seed, **hybrid_options)
        elif hybrid_options:
            raise ValueError(f"options {sorted(hybrid_options)} apply to kind='hybrid' only")
        elif kind == "fused":
            layer = _fused_class()(in_features, out_features, block=block, bias=bias, seed=seed)
        else:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self._lock = threading.RLock()
        self._attach(layer)

    @classmethod
    def from_layer(cls, layer) -> RBELinear:
        """A module computing with an existing rbe layer (shared, not copied)."""
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module._lock = threading.RLock()
        module._attach(layer)
        return module

    def _attach(self, layer) -> None:
        """Compute with ``layer``: re-point the parameters at its arrays, refresh the buffers.

        Parameters whose shape and dtype do not change keep their identity, so an optimiser
        created before ``load_state_dict`` keeps working.
        """
        self._kind = _kind_name(layer)
        arrays = layer.parameters()
        for name in [n for n in self._parameters if n not in arrays and n != "bias"]:
            del self._parameters[name]
        for name, array in arrays.items():
            tensor = torch.from_numpy(array)
            old = self._parameters.get(name)
            if old is not None and old.shape == tensor.shape and old.dtype == tensor.dtype:
                old.data = tensor
            else:
                self._parameters[name] = nn.Parameter(tensor)
            self._parameters[name]._rbe_owner = _Owner(self)
        if "bias" not in arrays:
            self._parameters["bias"] = None
        self._layer = layer
        self._refresh_buffers()
        self._versions = self._parameter_versions()

    def _refresh_buffers(self) -> None:
        """Buffers: copies of the layer's stored arrays that are not parameters."""
        config, arrays = self._layer._state()
        self._config = json.loads(json.dumps(config))
        params = self._layer.parameters()
        self._buffers.clear()
        for name, array in arrays.items():
            if name not in params:
                self._buffers[name] = torch.from_numpy(np.array(array))

    in_features = property(lambda self: self._layer.in_features)
    out_features = property(lambda self: self._layer.out_features)
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
        del state["_lock"]
        state["_buffers"] = {}      # rebuilt from the layer (uint16 storages do not pickle)
        state["_layer"] = (self._kind, *self._layer._state())
        return state

    def __setstate__(self, state: dict) -> None:
        kind, config, arrays = state.pop("_layer")
        super().__setstate__(state)
        self._lock = threading.RLock()
        self._attach(_kinds()[kind]._from_state(config, arrays))

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

    def _parameter_versions(self) -> tuple:
        return tuple(p._version for p in self._parameters.values() if p is not None)

    def sync(self, force: bool = False) -> None:
        """Run the layer's ``after_step()`` if a parameter changed since the last call.

        With ``force``, run it unconditionally (after changing parameters through ``.data``
        or the layer's numpy arrays).
        """
        if not force and self._parameter_versions() == self._versions:
            return      # the common case, without waiting for a backward holding the lock
        with self._lock:
            versions = self._parameter_versions()
            if force or versions != self._versions:
                self._layer.after_step()
                self._versions = versions

    # -- products ------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x W^T + b for a float32 CPU tensor x of shape (..., in_features)."""
        self._check_input(x)
        self.sync()
        params = [p for p in self._parameters.values() if p is not None]
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
            return _LayerFunction.apply(self, x, *params)
        return self._product(x)     # inference: skip the autograd node's overhead (~25 us)

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's forward on a checked input, as a tensor of shape (..., out_features)."""
        rows = x.detach().reshape(-1, self.in_features)
        out_shape = x.shape[:-1] + (self.out_features,)
        if rows.shape[0] == 0:
            return x.new_zeros(out_shape)
        return torch.from_numpy(self._layer.forward(rows.contiguous().numpy())).reshape(out_shape)

    def _check_input(self, x) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if x.device.type != "cpu":
            raise ValueError(f"rbe layers compute on the CPU; got a tensor on {x.device} "
                             "(move it with .cpu())")
        if x.dtype != torch.float32:
            raise ValueError(f"input must be float32, got {x.dtype}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"input must have shape (..., {self.in_features}), "
                             f"got {tuple(x.shape)}")

    def _backward(self, x: torch.Tensor, grad_output: torch.Tensor):
        """dx and the gradients of the parameters (in registration order)."""
        params = [(n, p) for n, p in self._parameters.items() if p is not None]
        rows = x.detach().reshape(-1, self.in_features)
        if rows.shape[0] == 0:
            return torch.zeros_like(x), [torch.zeros_like(p) for _, p in params]
        dy = grad_output.detach().reshape(-1, self.out_features).to(torch.float32)
        # The layer's grads dict is shared state: one backward at a time, copied out.
        with self._lock:
            dx = self._layer.backward(rows.contiguous().numpy(), dy.contiguous().numpy())
            grads = [torch.from_numpy(np.array(self._layer.grads[name], dtype=np.float32))
                     .reshape(p.shape) for name, p in params]
        return torch.from_numpy(dx).reshape(x.shape), grads

    # -- state_dict ----------------------------------------------------------------------------

    def get_extra_state(self) -> dict:
        return {"kind": self._kind, "config": self._config}

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        self.sync()
        self._refresh_buffers()
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
            expected = [n for n, p in self._parameters.items() if p is not None]
            expected += list(self._buffers) + [_EXTRA_STATE]
            missing = [prefix + name for name in expected if name not in mine]
            # Arrays a layer stores only for some contents (hybrid: mixed transforms, ragged
            # blocks) are expected when present.
            optional = set(getattr(type(self._layer), "OPTIONAL_STATE", ()))
            missing = [key for key in missing if key[len(prefix):] not in optional]
            if strict:
                unexpected_keys.extend(prefix + n for n in sorted(mine - set(expected) - optional))
            if missing:
                missing_keys.extend(missing)
                return
        try:
            cls = _kinds()[extra["kind"]]
            arrays = {name: state_dict[prefix + name].detach().cpu().numpy()
                      for name in mine if name != _EXTRA_STATE}
            layer = cls._from_state(extra["config"], arrays)
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
                f"kind={self.kind!r}, block={tuple(self._config['block'])}, "
                f"bias={self.bias is not None}, "
                f"ratio={self._layer.compression_ratio:.1f}")


def compress(model: nn.Module, kind: str = "hybrid", block=(64, 64), k: int | None = None,
             transform: str = "adaptive",
             filter: Callable[[str, nn.Module], bool] | None = None,
             **hybrid_options) -> nn.Module:
    """Replace the model's ``nn.Linear`` layers by :class:`RBELinear`, in place.

    Parameters
    ----------
    model : nn.Module
        On the CPU. A model that *is* an ``nn.Linear`` cannot be changed in place: its
        replacement is returned.
    kind : {"hybrid", "fused"}
        "hybrid" encodes every weight with ``rbe.HybridLinear.from_dense``. "fused" makes
        fresh seed-block layers of the same shapes, for training from scratch: seed blocks
        cannot encode a trained matrix, so the original weights are discarded.
    block, k, transform :
        Block shape (clamped to the layer size) and, for "hybrid", the encoder's k and
        transform ("dct", "dwt" or "adaptive").
    filter : callable(name, module) -> bool, optional
        Replace only the layers it accepts (names as in ``model.named_modules()``).
    **hybrid_options :
        For "hybrid", ``budget`` or ``ratio`` (per layer, instead of k), ``basis``, ``rank``
        and ``precision`` of ``rbe.HybridLinear.from_dense``.

    Returns
    -------
    The model (or the replacement of a bare ``nn.Linear``).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind != "hybrid" and hybrid_options:
        raise ValueError(f"options {sorted(hybrid_options)} apply to kind='hybrid' only")

    def accepts(name, m):
        return isinstance(m, nn.Linear) and (filter is None or filter(name, m))

    if accepts("", model):
        return _replacement(model, kind, block, k, transform, hybrid_options)
    # A layer used at several places is replaced once, by the same module everywhere.
    places = [(name, m) for name, m in model.named_modules(remove_duplicate=False)
              if name and accepts(name, m)]
    replacements = {}
    for linear in tqdm(list({id(m): m for _, m in places}.values()), desc="rbe.compress",
                       unit="layer", disable=None):
        replacements[id(linear)] = _replacement(linear, kind, block, k, transform,
                                                  hybrid_options)
    for name, linear in places:
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, replacements[id(linear)])
    return model


def _replacement(linear: nn.Linear, kind: str, block, k, transform: str,
                 hybrid_options: dict) -> RBELinear:
    if linear.weight.device.type != "cpu":
        raise ValueError(f"rbe layers compute on the CPU; the model is on {linear.weight.device}")
    block = (min(block[0], linear.out_features), min(block[1], linear.in_features))
    has_bias = linear.bias is not None
    if kind == "fused":
        return RBELinear(linear.in_features, linear.out_features, kind="fused", block=block,
                         bias=has_bias)
    weight = linear.weight.detach().to(torch.float32).numpy()
    bias = linear.bias.detach().to(torch.float32).numpy() if has_bias else None
    layer = HybridLinear.from_dense(weight, bias, block=block, k=k, transform=transform,
                                    progress=False, **hybrid_options)
    return RBELinear.from_layer(layer)
