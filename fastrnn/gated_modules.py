"""Where ``GRU``, ``LSTM``, ``GRUCell`` and ``LSTMCell`` lived before the family shared one module file: kept so
that imports and pickles naming ``fastrnn.gated_modules`` still work. The classes are in :mod:`fastrnn.modules`."""

from fastrnn.modules import GRU, LSTM, GRUCell, LSTMCell

__all__ = ["GRU", "LSTM", "GRUCell", "LSTMCell"]
