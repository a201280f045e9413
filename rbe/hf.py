"""rbe as a quantisation method of Hugging Face transformers: :class:`RbeConfig`.

Import explicitly (``import rbe.hf``; needs the ``hf`` extra, ``pip install "rbe[hf]"``). The
import registers the config and its quantiser with transformers under the name ``"rbe"``
(``register_quantization_config``, ``register_quantizer``), so that

- ``AutoModel.from_pretrained(name, quantization_config=RbeConfig(...))`` loads the weights and
  replaces the model's ``nn.Linear`` modules by ``rbe.torch.RBELinear`` (``rbe.torch.compress``
  with the config's kind and options);
- ``model.save_pretrained(folder)`` writes the compressed model: ``config.json`` with the
  config, and ``model.safetensors`` with every rbe module's stored parts (in the format of
  ``rbe.save``, named ``MODULE/PART``) next to the model's other tensors;
- ``AutoModel.from_pretrained(folder)`` in any process that imported ``rbe.hf`` rebuilds the rbe
  modules directly from the stored parts, with the checks of ``rbe.load``: nothing is encoded
  and no dense weight of a compressed module is allocated.

sentence-transformers loads its models through ``AutoModel``, so ``SentenceTransformer(folder)``
works the same way (docs/huggingface.md).
"""
from __future__ import annotations

import json
import re

try:
    import torch
    from torch import nn
    from transformers import AutoTokenizer
    from transformers.quantizers import HfQuantizer
    from transformers.quantizers.auto import register_quantization_config, register_quantizer
    from transformers.quantizers.quantizers_utils import should_convert_module
    from transformers.utils import logging
    from transformers.utils.quantization_config import QuantizationConfigMixin
except ImportError as exc:   # pragma: no cover - exercised only without transformers
    raise ImportError('rbe.hf needs PyTorch and transformers: pip install "rbe[hf]"') from exc

from . import torch as rbe_torch
from .io import load_model, model_entries

METHOD = "rbe"
logger = logging.get_logger(__name__)


@register_quantization_config(METHOD)
class RbeConfig(QuantizationConfigMixin):
    """How transformers compresses a model with rbe, and how a saved one is rebuilt.

    Parameters
    ----------
    kind : str
        The ``rbe.torch`` kind of the compressed modules (``rbe.torch.KINDS``); by default code
        blocks, the kind for pretrained weights.
    modules_to_not_convert : list of str, optional
        Modules kept as they are (names or patterns, as transformers' quantisers take them).
        None keeps transformers' default: the output embeddings and the last module; an empty
        list compresses every other ``nn.Linear``. Modules whose weights are tied to others
        (an output layer sharing the input embeddings) always stay dense.
    calibration : list of str, optional
        Texts for kinds that calibrate: tokenised with the model's tokenizer in batches of
        ``calibration_batch_size`` (at most ``calibration_max_length`` tokens) and passed to
        ``rbe.torch.compress`` as ``calibration``. They are not saved in ``config.json``.
    calibration_batch_size, calibration_max_length : int
        See ``calibration``.
    **options :
        The kind's options of ``rbe.torch.compress`` (for "hybrid": ``ratio`` or ``budget``,
        ``block``, ``k``, ``transform``, ``basis``, ``rank``, ``precision``; for "code":
        ``bits``, ``state_bits``, ``damping``, ``seed``), JSON values, as they are saved in
        ``config.json``.
    """

    def __init__(self, kind: str = "code", modules_to_not_convert: list[str] | None = None,
                 calibration: list[str] | None = None, calibration_batch_size: int = 8,
                 calibration_max_length: int = 128, options: dict | None = None,
                 quant_method: str = METHOD, **kind_options: object):
        if quant_method != METHOD:
            raise ValueError(f"an RbeConfig has quant_method {METHOD!r}, got {quant_method!r}")
        if kind not in rbe_torch.KINDS:
            raise ValueError(f"kind must be one of {rbe_torch.KINDS}, got {kind!r}")
        self.quant_method = METHOD
        self.kind = kind
        self.options = {**(options or {}), **kind_options}
        self.modules_to_not_convert = modules_to_not_convert
        self.calibration = calibration
        self.calibration_batch_size = calibration_batch_size
        self.calibration_max_length = calibration_max_length
        try:
            json.dumps(self.to_dict())
        except TypeError as exc:
            raise ValueError(f"RbeConfig values must be JSON values (config.json stores them): "
                             f"{exc}") from None

    def to_dict(self) -> dict:
        """The config as ``config.json`` stores it, without the calibration texts: they serve
        compressing only, and a model file should not carry a data set."""
        return {**super().to_dict(), "calibration": None}


class _Placeholder(nn.Module):
    """Where an rbe module goes while transformers loads the model's other tensors: a module
    without tensors, so that the loader neither allocates nor initialises a dense weight."""

    def forward(self, *args, **kwargs):
        raise RuntimeError("the rbe module was not installed (the model is still loading)")


@register_quantizer(METHOD)
class RbeHfQuantizer(HfQuantizer):
    """transformers' side of :class:`RbeConfig` (``from_pretrained``, ``save_pretrained``)."""

    requires_calibration = False
    quantization_config: RbeConfig

    def validate_environment(self, *args: object, device_map: dict | str | None = None,
                             **kwargs: object) -> None:
        """rbe layers compute on the CPU: a device map that places modules elsewhere is an
        error."""
        places = device_map.values() if isinstance(device_map, dict) else [device_map]
        elsewhere = sorted({str(p) for p in places if p is not None and str(p) != "cpu"})
        if elsewhere:
            raise ValueError(f"rbe layers compute on the CPU; the device map places modules on "
                             f"{elsewhere}")

    def update_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """float32, the dtype rbe layers compute in (their inputs are the other modules'
        outputs)."""
        if dtype not in (None, torch.float32):
            logger.warning(f"rbe layers compute in float32: the model loads in float32, not "
                           f"{dtype}")
        return torch.float32

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        """Compressing: note the modules to keep. Loading a compressed model: read its rbe
        layers from the checkpoint and put placeholders where they go."""
        if not self.pre_quantized:
            self.modules_to_not_convert = self.get_modules_to_not_convert(
                model, self.quantization_config.modules_to_not_convert,
                model._keep_in_fp32_modules)
            return
        if not checkpoint_files:
            raise ValueError("loading an rbe-compressed model needs its checkpoint files")
        layers, _ = load_model(checkpoint_files, tensors=False)
        self.layers = _placed(model, layers)
        rbe_torch._check_modules(model, self.layers)
        self.placeholders = {name: _Placeholder() for name in self.layers}
        rbe_torch._install(model, {id(model.get_submodule(name)): placeholder
                                   for name, placeholder in self.placeholders.items()})
        # The stored parts (MODULE/PART) are read here, not by transformers' loader.
        model._keys_to_ignore_on_load_unexpected = {
            *(model._keys_to_ignore_on_load_unexpected or ()),
            *(re.escape(name) + "/" for name in layers)}

    def _process_model_after_weight_loading(self, model, **kwargs):
        """Install the loaded rbe modules, or compress the model just loaded."""
        config = self.quantization_config
        if self.pre_quantized:
            rbe_torch._install(model, {
                id(self.placeholders[name]): rbe_torch.RBELinear.from_layer(layer)
                for name, layer in self.layers.items()})
            del self.layers, self.placeholders
            return model
        options = dict(config.options)
        if config.calibration:
            options["calibration"] = self._calibration_batches(model)
        tied = {key.rpartition(".")[0] for keys in rbe_torch._tied_tensors(model) for key in keys}
        return rbe_torch.compress(
            model, kind=config.kind,
            filter=lambda name, m: name not in tied and should_convert_module(
                name, self.modules_to_not_convert),
            **options)

    def _calibration_batches(self, model) -> list:
        """The config's calibration texts as tokenised batches (dicts of tensors)."""
        config = self.quantization_config
        tokenizer = AutoTokenizer.from_pretrained(model.config.name_or_path)
        texts, size = config.calibration, config.calibration_batch_size
        return [dict(tokenizer(texts[start:start + size], padding=True, truncation=True,
                               max_length=config.calibration_max_length, return_tensors="pt"))
                for start in range(0, len(texts), size)]

    def get_state_dict_and_metadata(self, model: nn.Module
                                    ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The model's other tensors and the stored parts of its rbe modules (``MODULE/PART``),
        with rbe's header as the safetensors metadata."""
        layers, state = rbe_torch._split_state(model)
        header, parts = model_entries(layers)
        return {**state, **{key: torch.from_numpy(a) for key, a in parts.items()}}, \
            {"rbe": header}

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True

    @property
    def is_compileable(self) -> bool:
        return True


def _placed(model: nn.Module, layers: dict) -> dict:
    """The layers by their module's name in ``model``, which may add or lack the base model's
    prefix as transformers allows (a model with a head from its base model's checkpoint, or
    the reverse)."""
    prefix = getattr(model, "base_model_prefix", "")
    placed = {}
    for name, layer in layers.items():
        candidates = [name, f"{prefix}.{name}", name.removeprefix(f"{prefix}.")]
        placed[next((c for c in candidates if _has_module(model, c)), name)] = layer
    return placed


def _has_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True
