"""Where the GRU / LSTM ops and layer nodes lived before the family shared one op generator: ``fastrnn.gated_ops``
is :mod:`fastrnn.ops` itself (the same module object), so that imports naming it keep working."""

import sys

from fastrnn import ops

sys.modules[__name__] = ops
