"""Where the GRU / LSTM references lived before the family shared one reference module: ``fastrnn.gated_reference``
is :mod:`fastrnn.reference` itself (the same module object, so that a name patched or read through either is the
one the ops call)."""

import sys

from fastrnn import reference

sys.modules[__name__] = reference
