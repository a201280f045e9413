"""Model files: rbe layers (and plain tensors) in safetensors with a versioned JSON header.

A file is an ordinary safetensors file. Its metadata key ``"rbe"`` holds a JSON header::

    {"format": "rbe", "version": 2,
     "entries": {NAME: {"kind": "hybrid_linear" | "fused_linear" | "code_linear" |
                                "hybrid_matrix" | "tensor",
                        "config": {...},                       # shapes, block sizes, wavelet...
                        "tensors": {PART: {"dtype": "float32", "shape": [...],
                                           "sha256": "..."}}}},
     "single": true,                                           # optional
     "model": {KEY: {"dtype": ..., "shape": ..., "sha256": ...}} | true}    # optional

and the tensor of part PART of entry NAME is stored as ``NAME/PART``. ``"single"`` marks a file
that :func:`save` was given one object (not a dict) for: it holds one entry, ``"layer"``, and
:func:`load` returns that object. Files without it (all those written before it existed) load
as a dict of their entries.

Loading reads the file itself, in this order, and raises :class:`FormatError` naming the entry,
part and problem at the first thing wrong:

1. the container: header length, then the header JSON under limits (size, nesting depth, number
   of values, number length; no NaN/Infinity, no repeated keys), every tensor's dtype (by name,
   among rbe's), shape and byte range, the byte ranges tiling the payload exactly;
2. the rbe header: format, version, and per entry its kind, every config field (a finite integer
   in range or a known name) and every part's dtype and shape, exactly as the kind defines them
   from the config (no casts, no broadcasts) -- all before any tensor is read, so a forged shape
   costs nothing;
3. per entry: the parts' bytes and checksums, finite parameters of bounded magnitude, then the
   layer's own consistency (block grid, indices).

Version 2 stores hybrid blocks ragged and compact (see ``HybridMatrix._state``). Version-1 files
still load: their parts are checked against the version-1 layout, then converted (``_upgraded``).

A whole-model file (:func:`model_entries`, :func:`load_model`; ``rbe.torch.save``, ``rbe.hf``)
has one layer entry per compressed module, named by the module's path, and ``"model"`` in the
header: the model's other tensors are in the same file under their own names (state-dict keys,
which have no ``/``), in rbe's dtypes or ``_MODEL_DTYPES``, either described like parts
(``{KEY: {"dtype", "shape", "sha256"}}``, checked on load) or, with ``"model": true``, left to
the framework that reads them (transformers). :func:`load` refuses such files,
:func:`load_model` any other.

Nothing is executed or unpickled; memory stays within a small multiple of the file's size.
:func:`layer_from_arrays` applies checks 2 and 3 to a config and arrays held in memory (how
rbe.torch loads a state dict).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import reprlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Callable, Union

import numpy as np
import pywt
from tqdm.auto import tqdm

from . import _checks, encoder, kernel, trellis
from . import transforms as tf
from .code import MAX_EXPONENT as MAX_CODE_EXPONENT
from .code import CodeLinear
from .encoder import HybridMatrix
from .fused import FusedLinear
from .hybrid import HybridLinear
from .layer import Layer, Stored

FORMAT = "rbe"
VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
_ALLOWED_DTYPES = {"float16", "float32", "float64", "uint8", "uint16", "uint64", "int64",
                   "int32"}
#: safetensors dtype names of the dtypes above; any other name is refused as it is.
_SAFETENSORS_DTYPES = {"F16": "float16", "F32": "float32", "F64": "float64", "U8": "uint8",
                       "U16": "uint16", "U64": "uint64", "I64": "int64", "I32": "int32"}
#: Further safetensors dtypes that a whole-model file's other tensors (the model's, which rbe
#: does not read) may have, by torch's names; rbe's own parts never have them.
_MODEL_DTYPES = {"BF16": "bfloat16", "BOOL": "bool", "I8": "int8", "I16": "int16",
                 "U32": "uint32", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
_ITEMSIZES = {"bfloat16": 2, "float8_e4m3fn": 1, "float8_e5m2": 1}

MAX_HEADER_BYTES = 8 << 20     #: the safetensors JSON header (names, shapes, checksums)
MAX_JSON_DEPTH = 16            #: nesting of objects and arrays (rbe's headers use 6)
MAX_JSON_VALUES = 1 << 18      #: objects, arrays and items: bounds the parsed header's memory
MAX_NUMBER_CHARS = 32
MAX_DIMS = 8
#: Largest magnitude of a loaded layer parameter: with inputs |x| <= 1 no layer within the
#: size limits can overflow float32 (2^60 * 2^16 coefficients * 2^31 inputs < 3.4e38).
MAX_PARAMETER = 2.0**60
#: Largest magnitude of a low-rank factor: the term multiplies two of them, so the same
#: guarantee needs 2^30 * 2^31 inputs * 2^30 * 2^31 ranks < 3.4e38.
MAX_FACTOR = 2.0**30


def _shown(value) -> str:
    """repr of a value from a file, shortened: an error message stays readable whatever the
    file holds."""
    return _SHORT_REPR.repr(value)


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = 120
_SHORT_REPR.maxlist = _SHORT_REPR.maxdict = 8


#: What a file entry holds.
Entry = Union[Stored, np.ndarray]


class FormatError(ValueError):
    """A file that is not a valid rbe model file (truncated, corrupted, forged or too new)."""


_LAYER_KINDS: dict[str, type[Layer]] = {"hybrid_linear": HybridLinear,
                                         "fused_linear": FusedLinear,
                                         "code_linear": CodeLinear}
_ENTRY_KINDS: dict[str, type[Stored]] = {**_LAYER_KINDS, "hybrid_matrix": HybridMatrix}


def layer_kinds() -> dict[str, type[Layer]]:
    """The registry of layers: entry kind in a file's header -> layer class."""
    return dict(_LAYER_KINDS)


def entry_kinds() -> dict[str, type[Stored]]:
    """Every kind of stored object (numpy arrays aside): entry kind -> class, whose
    ``_state()`` and ``_from_state(config, arrays)`` (:class:`rbe.layer.Stored`) it stores."""
    return dict(_ENTRY_KINDS)


def kind_of(obj: object) -> str:
    """The entry kind under which :func:`save` stores ``obj`` ("tensor" for a numpy array)."""
    if isinstance(obj, np.ndarray):
        return "tensor"
    for kind, cls in _ENTRY_KINDS.items():
        if isinstance(obj, cls):
            return kind
    raise ValueError(f"{type(obj).__name__} is not an rbe layer, HybridMatrix or numpy array")


def _checksum(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _describe(arrays: dict) -> dict:
    return {part: {"dtype": a.dtype.name, "shape": list(a.shape), "sha256": _checksum(a)}
            for part, a in arrays.items()}


def _entry_state(name: str, obj: Entry) -> tuple[str, dict, dict]:
    try:
        kind = kind_of(obj)
    except ValueError as exc:
        raise ValueError(f"cannot save {name!r}: {exc}") from None
    if not isinstance(obj, np.ndarray):
        return (kind, *obj._state())
    if obj.dtype.name not in _ALLOWED_DTYPES:
        raise ValueError(f"tensor {name!r} has unsupported dtype {obj.dtype}")
    return "tensor", {}, {"data": obj}


def _stored_entries(entries: Mapping[str, Entry]) -> tuple[dict, dict]:
    """The header's description of each entry and the arrays stored under NAME/PART."""
    described: dict[str, dict] = {}
    tensors: dict[str, np.ndarray] = {}
    for name, value in entries.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"entry names must be non-empty strings without '/', got {name!r}")
        kind, config, arrays = _entry_state(name, value)
        arrays = {part: np.ascontiguousarray(a) for part, a in arrays.items()}
        described[name] = {"kind": kind, "config": config, "tensors": _describe(arrays)}
        tensors.update({f"{name}/{part}": a for part, a in arrays.items()})
    return described, tensors


def save(path: str | os.PathLike, obj: Entry | Mapping[str, Entry]) -> None:
    """Save a layer, a HybridMatrix or a numpy array, or a dict name -> any of them.

    :func:`load` returns what was saved: the object, or the dict. (A single object is stored
    as the entry ``"layer"``, marked ``"single"`` in the header.)
    """
    from safetensors.numpy import save_file

    single = not isinstance(obj, Mapping)
    entries = dict(obj) if isinstance(obj, Mapping) else {"layer": obj}
    if not entries:
        raise ValueError("nothing to save")
    described, tensors = _stored_entries(entries)
    header = {"format": FORMAT, "version": VERSION, "entries": described,
              **({"single": True} if single else {})}
    # Created here first, so that a missing folder or a directory is a plain OSError.
    open(os.fspath(path), "wb").close()
    save_file(tensors, os.fspath(path), metadata={FORMAT: json.dumps(header)})


def model_entries(layers: Mapping[str, Layer],
                  others: Mapping[str, dict] | None = None) -> tuple[str, dict[str, np.ndarray]]:
    """The rbe header of a whole-model file (JSON, the safetensors metadata under ``"rbe"``)
    and the stored parts of its layers (key ``MODULE/PART`` -> a copy of the array).

    ``layers``: module name -> rbe layer. ``others``: the model's other tensors, which the file
    holds under their own names, described as ``{"dtype": torch's name, "shape": [...],
    "sha256": ...}`` and checked on load; or None: the file holds them undescribed (a file that
    transformers writes and reads, see ``rbe.hf``).
    """
    if not layers:
        raise ValueError("the model has no rbe layer to save")
    described, parts = _stored_entries(layers)
    unknown = [name for name in described if described[name]["kind"] not in _LAYER_KINDS]
    if unknown:
        raise ValueError(f"entries {unknown} are not layers")
    header = {"format": FORMAT, "version": VERSION, "entries": described,
              "model": True if others is None else dict(others)}
    return json.dumps(header), {key: np.array(a) for key, a in parts.items()}


# ---- bounded JSON ---------------------------------------------------------------------------

_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_LONG_NUMBER = re.compile(rf"[-+.0-9eE]{{{MAX_NUMBER_CHARS + 1},}}")
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_INNERMOST = re.compile(r"\[\]|\{\}")


def _check_json_limits(text: str, what: str) -> None:
    """Limits checked on the text before parsing: numbers, values, nesting depth."""
    skeleton = _JSON_STRING.sub('""', text)      # the structure, strings emptied
    if _LONG_NUMBER.search(skeleton):
        raise FormatError(f"{what}: a number longer than {MAX_NUMBER_CHARS} characters")
    values = skeleton.count(",") + skeleton.count("[") + skeleton.count("{")
    if values > MAX_JSON_VALUES:
        raise FormatError(f"{what}: more than {MAX_JSON_VALUES} JSON values")
    brackets = _NOT_BRACKET.sub("", skeleton)
    for _ in range(MAX_JSON_DEPTH):              # each pass removes one level of nesting
        brackets = _INNERMOST.sub("", brackets)
    if brackets:                                 # (the parser would recurse into them)
        raise FormatError(f"{what}: JSON nested deeper than {MAX_JSON_DEPTH} levels or "
                          "unbalanced brackets")


def _refuse_constant(name):
    raise FormatError(f"{name} is not a JSON number")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise FormatError(f"number {text} overflows")
    return value


def _unique_keys(pairs):
    result = dict(pairs)
    if len(result) != len(pairs):
        raise FormatError("an object repeats a key")
    return result


def _parse_json(raw: bytes, what: str):
    """Strict JSON from UTF-8 bytes, within the limits above."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"{what} is not UTF-8") from None
    _check_json_limits(text, what)
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float,
                          object_pairs_hook=_unique_keys)
    except FormatError as exc:
        raise FormatError(f"{what}: {exc}") from None
    except ValueError as exc:
        raise FormatError(f"{what} is not valid JSON ({exc})") from None


# ---- field checks ---------------------------------------------------------------------------

def _fields(obj, required: set, what: str, optional: frozenset = frozenset()) -> dict:
    """obj, if it is an object with exactly the required keys (and maybe optional ones)."""
    if not isinstance(obj, dict):
        raise FormatError(f"{what} is not an object")
    missing, unknown = required - set(obj), set(obj) - required - optional
    if missing or unknown:
        raise FormatError(f"{what}: missing {sorted(missing)}, unknown {_shown(sorted(unknown))}"
                          if missing else f"{what}: unknown fields {_shown(sorted(unknown))}")
    return obj


def _integer(value, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FormatError(f"{what} must be an integer in [{low}, {high}], got {_shown(value)}")
    return value


def _integers(value, what: str, length: int | None = None, high: int = 1 << 62) -> list:
    if not isinstance(value, list) or len(value) > MAX_DIMS \
            or (length is not None and len(value) != length):
        raise FormatError(f"{what} must be a list of {length or f'at most {MAX_DIMS}'} "
                          f"integers, got {_shown(value)}")
    return [_integer(v, 0, high, what) for v in value]


# ---- the container --------------------------------------------------------------------------

@dataclass(frozen=True)
class _Stored:
    """One tensor in the file: numpy dtype name, shape, byte range in the payload."""

    dtype: str
    shape: tuple
    begin: int
    end: int


def _tensor_layout(container: dict, payload_bytes: int, dtypes: dict) -> dict:
    """key -> _Stored for every tensor, of the safetensors ``dtypes`` (name -> rbe's name);
    their byte ranges must tile the payload."""
    layout = {}
    for key, info in container.items():
        what = f"tensor {_shown(key)}"
        _fields(info, {"dtype", "shape", "data_offsets"}, what)
        dtype = info["dtype"]
        if not isinstance(dtype, str) or dtype not in dtypes:
            raise FormatError(f"{what}: dtype {_shown(dtype)} is not one rbe reads "
                              f"({', '.join(dtypes)})")
        shape = tuple(_integers(info["shape"], f"{what} shape"))
        begin, end = _integers(info["data_offsets"], f"{what} data_offsets", length=2)
        name = dtypes[dtype]
        size = math.prod(shape) * (_ITEMSIZES.get(name) or np.dtype(name).itemsize)
        if end - begin != size:
            raise FormatError(f"{what}: {dtype}{list(shape)} needs {size} bytes, its data "
                              f"offsets span {end - begin}")
        layout[key] = _Stored(name, shape, begin, end)
    position = 0
    for key, stored in sorted(layout.items(), key=lambda item: item[1].begin):
        if stored.begin != position:
            raise FormatError(f"tensor {_shown(key)}: data starts at byte {stored.begin}, "
                              f"expected {position} (gaps and overlaps are refused)")
        position = stored.end
    if position != payload_bytes:
        raise FormatError(f"the tensors hold {position} bytes, the payload is {payload_bytes}")
    return layout


class _Container:
    """An open safetensors file whose header and tensor layout have been checked; with
    ``model``, tensors may also have the dtypes of a model's other tensors."""

    def __init__(self, path, model: bool = False):
        self.dtypes = {**_SAFETENSORS_DTYPES, **(_MODEL_DTYPES if model else {})}
        self.file = open(os.fspath(path), "rb")     # noqa: SIM115 (closed by __exit__)
        try:
            self._read_header()
        except FormatError as exc:
            self.file.close()
            raise FormatError(f"{os.fspath(path)}: not a valid safetensors file ({exc})") \
                from None
        except BaseException:
            self.file.close()
            raise

    def _read_header(self) -> None:
        size = os.fstat(self.file.fileno()).st_size
        if size < 8:
            raise FormatError(f"{size} bytes: too short for a safetensors file")
        length = int.from_bytes(self.file.read(8), "little")
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise FormatError(f"header length {length} exceeds the file ({size} bytes) or "
                              f"the limit of {MAX_HEADER_BYTES}")
        container = _parse_json(self.file.read(length), "the safetensors header")
        if not isinstance(container, dict):
            raise FormatError("the safetensors header is not an object")
        metadata = container.pop("__metadata__", {})
        if not isinstance(metadata, dict) \
                or not all(isinstance(v, str) for v in metadata.values()):
            raise FormatError("the safetensors metadata is not an object of strings")
        self.metadata = metadata
        self.layout = _tensor_layout(container, size - 8 - length, self.dtypes)
        self.payload_start = 8 + length

    def read_bytes(self, key: str) -> bytearray:
        """The bytes of the tensor stored under key."""
        stored = self.layout[key]
        data = bytearray(stored.end - stored.begin)
        self.file.seek(self.payload_start + stored.begin)
        if self.file.readinto(data) != len(data):
            raise FormatError(f"tensor {_shown(key)}: the file ended early")
        return data

    def read(self, key: str) -> tuple[np.ndarray, str]:
        """The tensor stored under key (a writable array) and the sha256 of its bytes."""
        stored, data = self.layout[key], self.read_bytes(key)
        array = np.frombuffer(data, np.dtype(stored.dtype).newbyteorder("<"))
        return array.reshape(stored.shape), hashlib.sha256(data).hexdigest()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


# ---- entry kinds ----------------------------------------------------------------------------

@dataclass(frozen=True)
class _Part:
    """A stored array of a kind: dtype (a name, a tuple of names, or a dimension naming it)
    and shape, dimensions named or fixed."""

    dtype: str | tuple | None
    shape: tuple
    optional: bool = False


@dataclass(frozen=True)
class _Kind:
    """What an entry of one kind holds.

    ``config``: field -> check(value, what) returning the value (fields in ``optional`` may be
    absent); ``dims``: config -> size of every named dimension, or its (low, high) range when
    the stored arrays set it, or the dtype of a part; ``check``: kind-specific checks of the
    config and arrays before the layer is built.
    """

    config: dict
    dims: Callable
    parts: dict
    check: Callable = lambda config, arrays: None
    bounded: bool = True          # floating-point parts hold parameters of bounded magnitude
    optional: frozenset = frozenset()


def _pair(high: int, area: int):
    def check(value, what):
        pair = _integers(value, what, length=2, high=high)
        if min(pair) < 1 or pair[0] * pair[1] > area:
            raise FormatError(f"{what} must be two integers in [1, {high}] with a product of "
                              f"at most {area}, got {_shown(value)}")
        return tuple(pair)
    return check


def _name(choices: Callable):
    def check(value, what):
        if not isinstance(value, str) or value not in choices():
            raise FormatError(f"{what} must be one of {tuple(choices())}, got {_shown(value)}")
        return value
    return check


def _count(value, what):
    return _integer(value, 1, _checks.MAX_FEATURES, what)


def _tau(value, what):
    try:
        return _checks.nonnegative_number(what, value)
    except ValueError:
        raise FormatError(f"{what} must be a finite number >= 0, got {_shown(value)}") from None


def _flag(value, what):
    if not isinstance(value, bool):
        raise FormatError(f"{what} must be true or false, got {_shown(value)}")
    return value


def _steps(value, what):
    return _integer(value, 0, _checks.MAX_FEATURES, what)


def _fraction(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise FormatError(f"{what} must be a number in (0, 1], got {_shown(value)}")
    return value


def _wavelets():
    return pywt.wavelist(kind="discrete")


def _hybrid_dims(config: dict) -> dict:
    """Version 1: k entries per block, zero-padded in blocks smaller than k."""
    block = config["block"]
    return {"blocks": _checks.block_count(config["shape"], block), "out": config["shape"][0],
            "k": (1, min(block[0] * block[1], encoder.MAX_BLOCK_ELEMENTS))}


def _ragged_dims(config: dict) -> dict:
    """Version 2: the entries of all blocks in one ragged list (exactly min(k, block size) per
    block when the config gives k)."""
    (rows, cols), (h, w) = config["shape"], config["block"]
    dims = {"blocks": _checks.block_count((rows, cols), (h, w)), "out": rows, "rows": rows,
            "cols": cols, "rank": (1, min(rows, cols)), "float": config["precision"],
            "position": "uint8" if h * w <= 256 else "uint16", "entries": (0, rows * cols)}
    if "k" in config:
        # Full blocks, then the narrower last column, the shorter last row, the corner.
        sides = [(rows // h, h), (1, rows % h)], [(cols // w, w), (1, cols % w)]
        dims["entries"] = sum(nr * nc * min(config["k"], bh * bw)
                              for nr, bh in sides[0] for nc, bw in sides[1])
    return dims


def _check_ragged(config: dict, arrays: dict) -> None:
    """Each per-block setting stored once (config or tensor), factors in pairs, counts adding
    up to the entries (positions inside their blocks are checked by the layer)."""
    for field, part in (("transform", "transform"), ("k", "counts")):
        if (field in config) == (part in arrays):
            raise FormatError(f"needs either config {field!r} or tensor {part!r}, not "
                              f"{'both' if field in config else 'neither'}")
    if ("factor_out" in arrays) != ("factor_in" in arrays):
        raise FormatError("tensors 'factor_out' and 'factor_in' come together")
    for part in ("factor_out", "factor_in"):
        factor = arrays.get(part)
        if factor is not None and factor.size \
                and max(float(factor.max()), -float(factor.min())) > MAX_FACTOR:
            raise FormatError(f"tensor {part!r} holds values beyond {MAX_FACTOR:.3g} in "
                              "magnitude")
    if "counts" in arrays:
        total = int(arrays["counts"].sum(dtype=np.int64))
        if total != len(arrays["index"]):
            raise FormatError(f"tensor 'counts' adds up to {total} entries, tensor 'index' "
                              f"holds {len(arrays['index'])}")


def _regrow(value, what):
    """[every or null, fraction, stop or null] (HybridLinear.set_regrow)."""
    if not isinstance(value, list) or len(value) != 3:
        raise FormatError(f"{what} must be [every, fraction, stop], got {_shown(value)}")
    every, fraction, stop = value
    return [None if every is None else _integer(every, 1, 1 << 62, f"{what} every"),
            _fraction(fraction, f"{what} fraction"),
            None if stop is None else _integer(stop, 1, 1 << 62, f"{what} stop")]


def _fused_dims(config: dict) -> dict:
    (h, w), rows, cols = config["block"], config["out_features"], config["in_features"]
    if h > rows or w > cols:
        raise FormatError(f"block {(h, w)} is larger than the layer ({rows} x {cols})")
    _checks.block_count((rows, cols), (h, w))
    return {"rows": -(-rows // h), "cols": -(-cols // w), "out": rows}


def _check_masters(config: dict, arrays: dict) -> None:
    """The r and theta master copies (the float32 halves of the ``lo`` words) are finite."""
    if not np.isfinite(arrays["lo"].view("<f4")).all():
        raise FormatError("tensor 'lo' holds NaN or infinite r/theta master copies")


def _hybrid_kind(version: int, *, bias: bool) -> _Kind:
    """Version 1: dense (blocks, k) positions and values, a transform id per block; version 2:
    ragged, compact storage, optional basis and low-rank term (HybridMatrix._state)."""
    config = {"shape": _pair(_checks.MAX_FEATURES, _checks.MAX_FEATURES**2),
              "block": _pair(encoder.MAX_BLOCK_SIDE, encoder.MAX_BLOCK_ELEMENTS),
              "wavelet": _name(_wavelets)}
    if version == 1:
        parts = {"coef": _Part("float32", ("blocks", tf.NUM_BASIS)),
                 "transform": _Part("uint8", ("blocks",)),
                 "index": _Part("uint16", ("blocks", "k")),
                 "values": _Part("float32", ("blocks", "k"))}
        kind = {"dims": _hybrid_dims}
    else:
        config.update(precision=_name(lambda: encoder.PRECISIONS),
                      transform=_name(lambda: tf.TRANSFORMS),
                      k=lambda value, what: _integer(value, 0, encoder.MAX_BLOCK_ELEMENTS, what))
        if bias:
            config.update(steps=lambda value, what: _integer(value, 0, 1 << 62, what),
                          regrow=_regrow)
        parts = {"coef": _Part("float", ("blocks", tf.NUM_BASIS), optional=True),
                 "transform": _Part("uint8", ("blocks",), optional=True),
                 "counts": _Part(("uint8", "uint16"), ("blocks",), optional=True),
                 "index": _Part("position", ("entries",)), "values": _Part("float", ("entries",)),
                 "factor_out": _Part("float", ("rows", "rank"), optional=True),
                 "factor_in": _Part("float", ("cols", "rank"), optional=True)}
        kind = {"dims": _ragged_dims, "check": _check_ragged,
                "optional": frozenset({"transform", "k"})}
    if bias:
        parts["bias"] = _Part("float32", ("out",), optional=True)
    return _Kind(config, parts=parts, **kind)


def _fused_kind(version: int) -> _Kind:
    """Version 1 holds the original parameterisation; version 2 adds centring, block scales
    and the transition schedule (docs/fused.md)."""
    config = {"in_features": _count, "out_features": _count,
              "block": _pair(kernel.MAX_BLOCK_SIDE, kernel.MAX_BLOCK_SIZE),
              "mode": _name(lambda: kernel.MODES),
              "tau": _tau}
    parts = {"hi": _Part("uint64", ("rows", "cols")), "lo": _Part("uint64", ("rows", "cols")),
             "alpha": _Part("float32", (1,)), "beta": _Part("float32", (1,)),
             "bias": _Part("float32", ("out",), optional=True)}
    if version >= 2:
        config.update(center=_flag, block_scale=_flag, transition_every=_steps,
                      max_moves=_fraction)
        parts["scale"] = _Part("float32", ("rows", "cols"), optional=True)
    return _Kind(config, _fused_dims, parts, check=_check_masters)


def _code_dims(config: dict) -> dict:
    tile = trellis.TILE
    rows = trellis.rotated_side(config["out_features"])
    cols = trellis.rotated_side(config["in_features"])
    return {"tile_rows": rows // tile, "tile_cols": cols // tile, "stream": 32 * config["bits"],
            "rows": rows, "out": config["out_features"]}


def _code_kind() -> _Kind:
    """Tile streams, float16 row scales times 2^exponent (CodeLinear._state)."""
    config = {"in_features": _count, "out_features": _count,
              "bits": lambda value, what: _integer(value, min(trellis.BITS), max(trellis.BITS),
                                                   what),
              "state_bits": lambda value, what: _integer(value, trellis.MIN_STATE_BITS,
                                                         trellis.MAX_STATE_BITS, what),
              "seed": lambda value, what: _integer(value, 0, (1 << 62) - 1, what),
              # 2^exponent * float16 scales of at most 1 stay within MAX_PARAMETER
              "exponent": lambda value, what: _integer(value, -160, MAX_CODE_EXPONENT, what)}
    parts = {"codes": _Part("uint8", ("tile_rows", "tile_cols", "stream")),
             "scale": _Part("float16", ("rows",)),
             "bias": _Part("float32", ("out",), optional=True)}
    return _Kind(config, _code_dims, parts, check=_check_code_scale)


def _check_code_scale(config: dict, arrays: dict) -> None:
    """The stored scales are at most 1 in magnitude (the exponent carries the rest)."""
    scale = arrays["scale"]
    if scale.size and float(np.max(np.abs(scale.astype(np.float32)))) > 1:
        raise FormatError("tensor 'scale' holds values beyond 1 in magnitude")


def _tensor_kind() -> _Kind:
    return _Kind({}, lambda config: {}, {"data": _Part(None, None)}, bounded=False)


def _kind_table(version: int) -> dict:
    """The entry kinds of a format version."""
    if isinstance(version, bool) or not isinstance(version, int) \
            or version not in SUPPORTED_VERSIONS:
        raise FormatError(f"unsupported format version {_shown(version)} (this rbe reads "
                          f"{', '.join(map(str, SUPPORTED_VERSIONS))})")
    return {"hybrid_matrix": _hybrid_kind(version, bias=False),
            "hybrid_linear": _hybrid_kind(version, bias=True),
            "fused_linear": _fused_kind(version), "tensor": _tensor_kind(),
            **({"code_linear": _code_kind()} if version >= 2 else {})}


# ---- the rbe header -------------------------------------------------------------------------

def _parse_header(metadata: dict) -> dict:
    if FORMAT not in metadata:
        raise FormatError("no rbe header in the file's metadata (not written by rbe.save)")
    raw = metadata[FORMAT].encode("utf-8", "surrogatepass")
    header = _fields(_parse_json(raw, "the rbe header"), {"format", "version", "entries"},
                     "the rbe header", optional=frozenset({"single", "model"}))
    if header["format"] != FORMAT:
        raise FormatError("the rbe header does not describe an rbe file")
    if not isinstance(header["entries"], dict) or not header["entries"]:
        raise FormatError("the rbe header lists no entries")
    single = header.get("single", False)
    if not isinstance(single, bool) or (single and len(header["entries"]) != 1):
        raise FormatError(f"the rbe header's \"single\" must be true or false, and true only "
                          f"with one entry; got {_shown(single)} with "
                          f"{len(header['entries'])} entries")
    model = header.get("model", True)
    if not (model is True or isinstance(model, dict)) or (single and "model" in header):
        raise FormatError(f"the rbe header's \"model\" must be true or an object describing the "
                          f"model's tensors, in a file of several entries; got {_shown(model)}")
    return header


@dataclass
class _Plan:
    """An entry whose header has been checked: what to read and how to build it."""

    name: str
    kind: str
    version: int
    spec: _Kind
    config: dict
    parts: dict                                   # part -> (container key, sha256)


def _check_description(what: str, described, stored: _Stored) -> str:
    """The header's description of a tensor (dtype, shape, sha256) matches the container;
    returns the checksum."""
    _fields(described, {"dtype", "shape", "sha256"}, what)
    if described["dtype"] != stored.dtype or described["shape"] != list(stored.shape):
        raise FormatError(f"{what} is {stored.dtype}{list(stored.shape)}, the header says "
                          f"{_shown(described['dtype'])} {_shown(described['shape'])}")
    sha = described["sha256"]
    if not isinstance(sha, str) or not re.fullmatch("[0-9a-f]{64}", sha):
        raise FormatError(f"{what} has no valid sha256")
    return sha


def _check_part(where: str, part: str, described, stored: _Stored, expected: _Part,
                dims: dict) -> None:
    """The header's description of a part matches the container and the kind."""
    _check_description(f"{where}: tensor {part!r}", described, stored)
    if expected.dtype is None:
        if stored.dtype not in _ALLOWED_DTYPES:
            raise FormatError(f"{where}: tensor {part!r} is {stored.dtype}, not a dtype rbe "
                              f"reads ({', '.join(sorted(_ALLOWED_DTYPES))})")
        return
    dtypes = dims.get(expected.dtype, expected.dtype) if isinstance(expected.dtype, str) \
        else expected.dtype
    dtypes = (dtypes,) if isinstance(dtypes, str) else dtypes
    if stored.dtype not in dtypes or len(stored.shape) != len(expected.shape):
        raise FormatError(f"{where}: tensor {part!r} must be {' or '.join(dtypes)} with "
                          f"{len(expected.shape)} dimension(s), got "
                          f"{stored.dtype}{list(stored.shape)}")
    for axis, (size, dim) in enumerate(zip(stored.shape, expected.shape)):
        want = dims.get(dim, dim)
        if isinstance(want, tuple):                # set by the arrays: the first one fixes it
            low, high = want
            if not low <= size <= high:
                raise FormatError(f"{where}: tensor {part!r} has {dim} = {size}, outside "
                                  f"[{low}, {high}]")
            dims[dim] = want = size
        if size != want:
            raise FormatError(f"{where}: tensor {part!r} has shape {list(stored.shape)}, the "
                              f"config makes axis {axis} ({dim}) {want}")


def _plan_entry(name, entry, version: int, kinds: dict, layout: dict) -> _Plan:
    if not isinstance(name, str) or not name or "/" in name:
        raise FormatError(f"entry name {_shown(name)} is empty or holds '/'")
    where = f"entry {_shown(name)}"
    _fields(entry, {"kind", "config", "tensors"}, where)
    kind = entry["kind"]
    if not isinstance(kind, str) or kind not in kinds:
        raise FormatError(f"{where}: unknown kind {_shown(kind)}")
    spec = kinds[kind]
    config = _fields(entry["config"], set(spec.config) - spec.optional, f"{where}: config",
                     spec.optional)
    config = {key: check(config[key], f"{where}: config {_shown(key)}")
              for key, check in spec.config.items() if key in config}
    try:
        dims = spec.dims(config)
    except ValueError as exc:
        raise FormatError(f"{where}: {exc}") from None
    required = {p for p, part in spec.parts.items() if not part.optional}
    described = _fields(entry["tensors"], required, f"{where}: tensors",
                        frozenset(spec.parts) - required)
    parts = {}
    for part, expected in spec.parts.items():
        if part not in described:
            continue
        key = f"{name}/{part}"
        if key not in layout:
            raise FormatError(f"{where}: tensor {part!r} is missing")
        _check_part(where, part, described[part], layout[key], expected, dims)
        parts[part] = (key, described[part]["sha256"])
    return _Plan(name, kind, version, spec, config, parts)


def _plan(header: dict, layout: dict) -> list:
    """Every entry checked against the container, before any tensor is read."""
    kinds = _kind_table(header["version"])
    plans = [_plan_entry(name, entry, header["version"], kinds, layout)
             for name, entry in header["entries"].items()]
    described = {key for plan in plans for key, _ in plan.parts.values()}
    extra = sorted(set(layout) - described)
    if extra:
        raise FormatError(f"tensors not described by the header: {_shown(extra)}")
    return plans


def _read_entry(plan: _Plan, read: Callable[[str], tuple[np.ndarray, str]]) -> dict:
    """The entry's arrays, read by ``read(key)`` (array and sha256), then checked."""
    arrays = {}
    for part, (key, sha256) in plan.parts.items():
        array, digest = read(key)
        if digest != sha256:
            raise FormatError(f"entry {_shown(plan.name)}: tensor {part!r} fails its checksum "
                              "(corrupted)")
        arrays[part] = array
    _check_values(plan, arrays)
    return arrays


def _check_values(plan: _Plan, arrays: dict) -> None:
    """Finite parameters of bounded magnitude, then the kind's own checks."""
    where = f"entry {_shown(plan.name)}"
    for part, array in arrays.items():
        if array.dtype.kind == "f":
            if not np.isfinite(array).all():
                raise FormatError(f"{where}: tensor {part!r} holds NaN or inf")
            if plan.spec.bounded and array.size \
                    and max(float(array.max()), -float(array.min())) > MAX_PARAMETER:
                raise FormatError(f"{where}: tensor {part!r} holds values beyond "
                                  f"{MAX_PARAMETER:.3g} in magnitude")
    try:
        plan.spec.check(plan.config, arrays)
    except FormatError as exc:
        raise FormatError(f"{where}: {exc}") from None


def _upgraded(plan: _Plan, arrays: dict) -> tuple[dict, dict]:
    """An entry's config and checked arrays in the form of the current version."""
    if plan.version == 1 and plan.kind in ("hybrid_linear", "hybrid_matrix"):
        return encoder.upgrade_v1_state(plan.config, arrays)
    return plan.config, arrays


def _build(plan: _Plan, arrays: dict):
    if plan.kind == "tensor":
        return arrays["data"]
    try:
        return _ENTRY_KINDS[plan.kind]._from_state(*_upgraded(plan, arrays))
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        raise FormatError(f"entry {_shown(plan.name)} ({plan.kind}): {exc}") from None


def layer_from_arrays(kind: str, config: dict, arrays: dict) -> Layer:
    """A layer of entry kind ``kind`` ("hybrid_linear", "fused_linear") from a config and
    arrays held in memory (a torch state dict, for one), with the checks :func:`load` applies
    to a file's entry (steps 2 and 3 above, checksums aside); a FormatError otherwise.

    Floating-point parameters may be float32 where the entry stores a lower ``precision``
    (training keeps float32, as :meth:`HybridLinear._state` describes).
    """
    if kind not in _LAYER_KINDS:
        raise FormatError(f"unknown layer kind {_shown(kind)}")
    kinds = _kind_table(VERSION)
    parts = kinds[kind].parts
    if not all(isinstance(a, np.ndarray) for a in arrays.values()):
        raise FormatError("the arrays must be numpy arrays")
    arrays = {part: np.ascontiguousarray(a) for part, a in arrays.items()}    # as save stores
    described, layout = {}, {}
    for part, array in arrays.items():
        dtype = array.dtype.name
        if part in parts and parts[part].dtype == "float" and dtype == "float32" \
                and isinstance(config, dict) and isinstance(config.get("precision"), str):
            dtype = config["precision"]             # checked against the config below
        described[part] = {"dtype": dtype, "shape": list(array.shape), "sha256": "0" * 64}
        layout[f"layer/{part}"] = _Stored(dtype, array.shape, 0, array.nbytes)
    plan = _plan_entry("layer", {"kind": kind, "config": config, "tensors": described},
                       VERSION, kinds, layout)
    _check_values(plan, arrays)
    return _build(plan, arrays)


def load(path: str | os.PathLike) -> Entry | dict[str, Entry]:
    """Load a file written by :func:`save`: what was saved, a layer, HybridMatrix or array,
    or a dict name -> any of them (files written before single objects were marked load as
    a dict, the object under ``"layer"``).

    Raises
    ------
    FormatError
        If the file is truncated, corrupted, forged, inconsistent, of an unknown version or
        beyond rbe's limits (the message names the entry, part and problem); nothing else for
        any content of a readable file.
    OSError
        If the file cannot be opened or read (FileNotFoundError if there is none).
    """
    with _Container(path) as container:
        header = _parse_header(container.metadata)
        if "model" in header:
            raise FormatError(f"{os.fspath(path)} holds a whole model (rbe.torch.save, or "
                              "save_pretrained with rbe.hf): load it into the model with "
                              "rbe.torch.load(path, model) or from_pretrained")
        plans = _plan(header, container.layout)
        entries = {plan.name: _build(plan, _read_entry(plan, container.read)) for plan in plans}
    return next(iter(entries.values())) if header.get("single") else entries


# ---- whole-model files ------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelTensor:
    """One of a whole-model file's other tensors: its dtype (torch's name), shape and bytes
    (little-endian, as safetensors stores them)."""

    dtype: str
    shape: tuple
    data: bytearray


def load_model(paths: str | os.PathLike | Sequence[str | os.PathLike], tensors: bool = True
               ) -> tuple[dict[str, Layer], dict[str, ModelTensor]]:
    """Read a whole-model file written with :func:`model_entries` (or its shards, each holding
    the same header): its layers, module name -> layer, each checked as :func:`load` checks an
    entry, and (with ``tensors``) the model's other tensors, checked against their description
    where the header has one.

    Raises FormatError as :func:`load` does (also for a file that :func:`save` wrote), OSError
    when a file cannot be read.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    with contextlib.ExitStack() as stack:
        containers = [stack.enter_context(_Container(path, model=True)) for path in paths]
        header = _parse_header(containers[0].metadata)
        if "model" not in header:
            raise FormatError(f"{os.fspath(paths[0])} holds rbe layers, not a whole model: "
                              "load it with rbe.load")
        if any(_parse_header(c.metadata) != header for c in containers[1:]):
            raise FormatError("the shards hold different rbe headers")
        holder = {}
        for container in containers:
            for key in container.layout:
                if holder.setdefault(key, container) is not container:
                    raise FormatError(f"tensor {_shown(key)} is stored in two shards")
        layout = {key: container.layout[key] for key, container in holder.items()}
        kinds = _kind_table(header["version"])
        plans = [_plan_entry(name, entry, header["version"], kinds, layout)
                 for name, entry in header["entries"].items()]
        for plan in plans:
            if plan.kind not in _LAYER_KINDS:
                raise FormatError(f"entry {_shown(plan.name)}: kind {plan.kind!r} is not a layer")
        parts = {key for plan in plans for key, _ in plan.parts.values()}
        others = _check_model_tensors(header["model"], layout, set(layout) - parts)
        layers = {plan.name: _build(plan, _read_entry(plan, lambda key: holder[key].read(key)))
                  for plan in tqdm(plans, desc="rbe layers", unit="layer", disable=None)}
        read = {}
        for key in sorted(others) if tensors else ():
            data = holder[key].read_bytes(key)
            if others[key] is not None and hashlib.sha256(data).hexdigest() != others[key]:
                raise FormatError(f"tensor {_shown(key)} fails its checksum (corrupted)")
            read[key] = ModelTensor(layout[key].dtype, layout[key].shape, data)
    return layers, read


def _check_model_tensors(model, layout: dict, keys: set) -> dict:
    """The model's other tensors (not the layers' parts): key -> sha256 from their description,
    or None for the tensors of a header that does not describe them (``"model": true``)."""
    if model is True:
        parts = sorted(key for key in keys if "/" in key)
        if parts:
            raise FormatError(f"tensors not described by the header: {_shown(parts)}")
        return dict.fromkeys(keys)
    missing, extra = sorted(set(model) - keys), sorted(keys - set(model))
    if missing or extra:
        raise FormatError(f"the model's tensors: missing {_shown(missing)}, not described "
                          f"{_shown(extra)}")
    return {key: _check_description(f"model tensor {_shown(key)}", model[key], layout[key])
            for key in sorted(keys)}
