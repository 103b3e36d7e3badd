"""fastrnn: a drop-in, fast ``torch.nn.RNN`` and ``torch.nn.RNNCell``, and the rest of the family:
``GRU``, ``GRUCell``, ``LSTM``, ``LSTMCell``.

Importing fastrnn never compiles or fails for want of a compiler, Triton or a GPU: backends load on first use.
"""

from fastrnn import functional
from fastrnn._cpp import empty_cache, load_built_ops
from fastrnn.backends import available_backends
from fastrnn.conversion import from_torch, to_torch
from fastrnn.modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from fastrnn.ops import RNNRecurrenceFunction, rnn_recurrence

try:
    from fastrnn.quantization import quantize_dynamic
except ImportError:  # a torch without torch.ao.quantization: nothing to register with
    quantize_dynamic = None
from fastrnn.reference import rnn_recurrence_bwd_ref, rnn_recurrence_ref

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "GRUCell",
    "LSTMCell",
    "RNNCell",
    "RNNRecurrenceFunction",
    "available_backends",
    "empty_cache",
    "from_torch",
    "functional",
    "quantize_dynamic",
    "rnn_recurrence",
    "rnn_recurrence_bwd_ref",
    "rnn_recurrence_ref",
    "to_torch",
]
__version__ = "0.1.0"

load_built_ops()
