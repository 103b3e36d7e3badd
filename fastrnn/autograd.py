"""The Elman recurrence's entry and eager Function, now generated with the family's in :mod:`fastrnn.ops`; these
names stay importable from here."""

from fastrnn.ops import RNNRecurrenceFunction, rnn_recurrence
from fastrnn.ops import state_weight_grad as recurrent_weight_grad

__all__ = ["RNNRecurrenceFunction", "recurrent_weight_grad", "rnn_recurrence"]
