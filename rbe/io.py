"""Model files: rbe layers (and plain tensors) in safetensors with a versioned JSON header.

A file is an ordinary safetensors file. Its metadata key ``"rbe"`` holds a JSON header::

    {"format": "rbe", "version": 2,
     "entries": {NAME: {"kind": "hybrid_linear" | "fused_linear" | "hybrid_matrix" | "tensor",
                        "config": {...},                       # shapes, block sizes, wavelet...
                        "tensors": {PART: {"dtype": "float32", "shape": [...],
                                           "sha256": "..."}}}}}

and the tensor of part PART of entry NAME is stored as ``NAME/PART``. Loading checks the
container, the header, every tensor's dtype, shape and checksum, and then the entry's own
consistency (block grid, indices, finite parameters); anything wrong raises
:class:`FormatError` naming the problem. Nothing is executed or unpickled.

Version 2 stores hybrid blocks ragged and compact (see ``HybridMatrix._state``). Version-1 files
still load: their hybrid entries are converted on load (``_upgraded``).
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

FORMAT = "rbe"
VERSION = 2
READABLE_VERSIONS = (1, 2)
_ALLOWED_DTYPES = {"float32", "float64", "uint8", "uint16", "uint64", "int64", "int32"}


class FormatError(ValueError):
    """A file that is not a valid rbe model file (truncated, corrupted, forged or too new)."""


def _kinds() -> dict:
    """Entry kind -> class; each has ``_state()`` and ``_from_state(config, arrays)``."""
    from .encoder import HybridMatrix
    from .hybrid import HybridLinear
    kinds = {"hybrid_linear": HybridLinear, "hybrid_matrix": HybridMatrix}
    try:
        from .fused import FusedLinear
        kinds["fused_linear"] = FusedLinear
    except ImportError:
        pass
    return kinds


def _checksum(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _describe(arrays: dict) -> dict:
    return {part: {"dtype": a.dtype.name, "shape": list(a.shape), "sha256": _checksum(a)}
            for part, a in arrays.items()}


def _entry_state(name: str, obj) -> tuple[str, dict, dict]:
    if isinstance(obj, np.ndarray):
        if obj.dtype.name not in _ALLOWED_DTYPES:
            raise ValueError(f"tensor {name!r} has unsupported dtype {obj.dtype}")
        return "tensor", {}, {"data": obj}
    for kind, cls in _kinds().items():
        if isinstance(obj, cls):
            config, arrays = obj._state()
            return kind, config, arrays
    raise ValueError(f"cannot save {name!r}: {type(obj).__name__} is not an rbe layer, "
                     "HybridMatrix or numpy array")


def save(path, obj) -> None:
    """Save a layer, a HybridMatrix, or a dict of them (numpy arrays are kept as tensors).

    A single object is stored under the name ``"layer"``.
    """
    from safetensors.numpy import save_file

    entries = obj if isinstance(obj, dict) else {"layer": obj}
    if not entries:
        raise ValueError("nothing to save")
    header, tensors = {"format": FORMAT, "version": VERSION, "entries": {}}, {}
    for name, value in entries.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"entry names must be non-empty strings without '/', got {name!r}")
        kind, config, arrays = _entry_state(name, value)
        arrays = {part: np.ascontiguousarray(a) for part, a in arrays.items()}
        header["entries"][name] = {"kind": kind, "config": config, "tensors": _describe(arrays)}
        tensors.update({f"{name}/{part}": a for part, a in arrays.items()})
    save_file(tensors, os.fspath(path), metadata={FORMAT: json.dumps(header)})


def _read_container(path) -> tuple[dict, dict]:
    """The tensors and the metadata of a safetensors file, or FormatError."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(os.fspath(path), framework="np") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise FormatError(f"{os.fspath(path)}: not a valid safetensors file ({exc})") from None
    return metadata, tensors


def _parse_header(metadata: dict) -> dict:
    if FORMAT not in metadata:
        raise FormatError("no rbe header in the file's metadata (not written by rbe.save)")
    try:
        header = json.loads(metadata[FORMAT])
    except json.JSONDecodeError as exc:
        raise FormatError(f"the rbe header is not valid JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise FormatError("the rbe header does not describe an rbe file")
    version = header.get("version")
    if version not in READABLE_VERSIONS:
        raise FormatError(f"unsupported format version {version!r} "
                          f"(this rbe reads {READABLE_VERSIONS})")
    if not isinstance(header.get("entries"), dict) or not header["entries"]:
        raise FormatError("the rbe header lists no entries")
    return header


def _checked_arrays(name: str, entry: dict, tensors: dict) -> dict:
    described = entry.get("tensors")
    if not isinstance(described, dict):
        raise FormatError(f"entry {name!r}: no tensor list")
    arrays = {}
    for part, spec in described.items():
        key = f"{name}/{part}"
        if key not in tensors:
            raise FormatError(f"entry {name!r}: tensor {part!r} is missing")
        a = tensors.pop(key)
        if not isinstance(spec, dict) or a.dtype.name != spec.get("dtype") \
                or list(a.shape) != spec.get("shape"):
            raise FormatError(f"entry {name!r}: tensor {part!r} is {a.dtype.name}{list(a.shape)}, "
                              f"the header says {spec!r}")
        if _checksum(a) != spec.get("sha256"):
            raise FormatError(f"entry {name!r}: tensor {part!r} fails its checksum (corrupted)")
        arrays[part] = a
    return arrays


def _upgraded(kind: str, config: dict, arrays: dict, version: int) -> tuple[dict, dict]:
    """An entry's config and arrays in the form of the current version."""
    if version == 1 and kind in ("hybrid_linear", "hybrid_matrix"):
        from .encoder import upgrade_v1_state
        return upgrade_v1_state(config, arrays)
    return config, arrays


def _build(name: str, entry: dict, arrays: dict, version: int):
    kind = entry.get("kind")
    if kind == "tensor":
        if set(arrays) != {"data"}:
            raise FormatError(f"entry {name!r}: a tensor entry holds exactly one 'data' tensor")
        return arrays["data"]
    cls = _kinds().get(kind)
    if cls is None:
        raise FormatError(f"entry {name!r}: unknown kind {kind!r}")
    config = entry.get("config")
    if not isinstance(config, dict):
        raise FormatError(f"entry {name!r}: no config")
    for part, a in arrays.items():
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise FormatError(f"entry {name!r}: tensor {part!r} holds NaN or inf")
    try:
        return cls._from_state(*_upgraded(kind, config, arrays, version))
    except (ValueError, TypeError, KeyError) as exc:
        raise FormatError(f"entry {name!r} ({kind}): {exc}") from None


def load(path) -> dict:
    """Load a file written by :func:`save`: a dict name -> layer, HybridMatrix or array.

    Raises
    ------
    FormatError
        If the file is truncated, corrupted, forged, inconsistent or of an unknown version.
    FileNotFoundError
        If there is no such file.
    """
    metadata, tensors = _read_container(path)
    header = _parse_header(metadata)
    result = {}
    for name, entry in header["entries"].items():
        if not isinstance(entry, dict):
            raise FormatError(f"entry {name!r} is not an object")
        result[name] = _build(name, entry, _checked_arrays(name, entry, tensors),
                              header["version"])
    if tensors:
        raise FormatError(f"tensors not described by the header: {sorted(tensors)[:5]}")
    return result
