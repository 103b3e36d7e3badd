"""Dynamic int8 quantization of fastrnn modules, as torch quantizes its own.

``torch.ao.quantization.quantize_dynamic`` swaps modules by exact type, so without help it would leave
``fastrnn.RNNCell`` in float32 without a word. Importing fastrnn registers the swap to torch's dynamic
quantized ``RNNCell`` (same weights, int8 matmuls), so ``quantize_dynamic(model, {fastrnn.RNNCell})`` works;
:func:`quantize_dynamic` also reads torch's classes in ``qconfig_spec`` (``{nn.RNNCell}``, or the default
spec) as covering their fastrnn drop-ins. ``torch.nn.RNN`` has no dynamic quantized form in torch, and
neither has ``fastrnn.RNN``: both stay float.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn
from torch.ao.nn.quantized import dynamic as nnqd
from torch.ao.quantization import quantization_mappings

from fastrnn.modules import RNNCell

FASTRNN_EQUIVALENTS: dict[type, type] = {nn.RNNCell: RNNCell}


class QuantizedRNNCellFromFastrnn:
    """The quantization mapping's entry for ``fastrnn.RNNCell``: torch's dynamic quantized ``RNNCell``."""

    @classmethod
    def from_float(cls, mod: RNNCell, use_precomputed_fake_quant: bool = False) -> nnqd.RNNCell:
        plain = mod.to_torch()
        plain.qconfig = mod.qconfig
        return nnqd.RNNCell.from_float(plain, use_precomputed_fake_quant=use_precomputed_fake_quant)


def register_quantization_mappings() -> None:
    quantization_mappings.DEFAULT_DYNAMIC_QUANT_MODULE_MAPPINGS[RNNCell] = QuantizedRNNCellFromFastrnn


def _default_spec(dtype: torch.dtype) -> set:
    if dtype == torch.qint8:
        return {nn.Linear, nn.LSTM, nn.GRU, nn.LSTMCell, nn.RNNCell, nn.GRUCell}
    if dtype == torch.float16:
        return {nn.Linear, nn.LSTM, nn.GRU, nn.LSTMCell, nn.RNNCell, nn.GRUCell}
    if dtype == torch.quint8:
        return {nn.EmbeddingBag, nn.Embedding}
    if dtype == torch.quint4x2:
        return {nn.EmbeddingBag}
    raise ValueError(f"Don't know how to quantize with default settings for {dtype}. Provide full qconfig please")


def quantize_dynamic(model: nn.Module, qconfig_spec: Optional[Any] = None, dtype: torch.dtype = torch.qint8,
                     mapping: Optional[dict] = None, inplace: bool = False) -> nn.Module:
    """``torch.ao.quantization.quantize_dynamic`` where every torch class in ``qconfig_spec`` (given or
    default) also names its fastrnn drop-in, so ``{nn.RNNCell}`` quantizes a ``fastrnn.RNNCell`` too."""
    spec = _default_spec(dtype) if qconfig_spec is None else qconfig_spec
    if isinstance(spec, dict):
        spec = {**spec, **{FASTRNN_EQUIVALENTS[k]: v for k, v in spec.items() if k in FASTRNN_EQUIVALENTS}}
    else:
        spec = set(spec) | {FASTRNN_EQUIVALENTS[k] for k in spec if k in FASTRNN_EQUIVALENTS}
    return torch.ao.quantization.quantize_dynamic(model, spec, dtype=dtype, mapping=mapping, inplace=inplace)


register_quantization_mappings()
