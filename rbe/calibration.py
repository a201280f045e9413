"""Statistics of a layer's inputs, for compression that minimises the error of its outputs.

:func:`rbe.torch.calibrate` collects them from a model and sample inputs; ``rbe compress
--calibration FILE`` reads them from a file written by :func:`save`. A code layer
(``CodeLinear.from_dense``) takes the second moment to weight its errors (LDLQ) and the mean to
correct its bias.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from . import io

_MEAN, _SECOND = "mean", "second_moment"


@dataclass
class InputMoments:
    """First and second moments of a layer's inputs x (in_features each)."""

    mean: np.ndarray            #: (in_features,) float64, E[x]
    second_moment: np.ndarray   #: (in_features, in_features) float64, E[x x^T]
    count: int                  #: inputs averaged

    @classmethod
    def accumulate(cls, total: np.ndarray, outer: np.ndarray, count: int) -> InputMoments:
        """From the sum of the inputs, the sum of their outer products and their number."""
        if count < 1:
            raise ValueError("no inputs reached the layer: nothing to calibrate with")
        return cls(total / count, outer / count, int(count))


def save(path: str | os.PathLike, moments: Mapping[str, InputMoments]) -> None:
    """Write moments by layer name (a model's module names; ``rbe compress --calibration``
    matches them to weights "NAME.weight") as an rbe file of plain tensors."""
    tensors = {}
    for name, m in moments.items():
        tensors[f"{name}.{_MEAN}"] = np.asarray(m.mean, np.float64)
        tensors[f"{name}.{_SECOND}"] = np.asarray(m.second_moment, np.float64)
        tensors[f"{name}.count"] = np.array([m.count], np.int64)
    io.save(path, tensors)


def load(path: str | os.PathLike) -> dict[str, InputMoments]:
    """Moments by layer name from a file written by :func:`save` (rbe.FormatError if it is
    not one)."""
    entries = io.load(path)
    if not isinstance(entries, dict):
        raise io.FormatError(f"{os.fspath(path)}: not a file of input moments")
    names = {key[:-len(f".{_SECOND}")] for key in entries if key.endswith(f".{_SECOND}")}
    moments = {}
    for name in sorted(names):
        try:
            mean, second = entries[f"{name}.{_MEAN}"], entries[f"{name}.{_SECOND}"]
            count = entries[f"{name}.count"]
        except KeyError as exc:
            raise io.FormatError(f"{os.fspath(path)}: layer {name!r} lacks {exc}") from None
        n = mean.shape[0] if mean.ndim == 1 else -1
        if second.shape != (n, n) or count.shape != (1,) or count.dtype != np.int64 \
                or count[0] < 1:
            raise io.FormatError(f"{os.fspath(path)}: the moments of layer {name!r} do not "
                                 "match (mean (n,), second_moment (n, n), count (1,) >= 1)")
        moments[name] = InputMoments(mean.astype(np.float64), second.astype(np.float64),
                                     int(count[0]))
    return moments
