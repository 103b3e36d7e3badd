"""Every malformed state (tuple arity, a tensor where a tuple belongs and back, per-element shape, device, dtype,
None inside a tuple, a non-tensor) given to each of the six modules raises torch's exception type and message,
batched and unbatched."""

import pytest
import torch

import fastrnn
from tests.test_errors import _outcome

NAMES = ["RNN", "GRU", "LSTM", "RNNCell", "GRUCell", "LSTMCell"]


def _states(shape: tuple) -> dict:
    z = lambda *s, **kw: torch.zeros(*(s or shape), **kw)  # noqa: E731
    return {
        "three_tensors": (z(), z(), z()),
        "one_tensor_tuple": (z(),),
        "tensor": z(),
        "list_of_two": [z(), z()],
        "tuple_of_two": (z(), z()),
        "second_wrong_shape": (z(), z(3, 3)),
        "first_wrong_shape": (z(3, 3), z()),
        "first_float64": (z(dtype=torch.float64), z()),
        "second_float64": (z(), z(dtype=torch.float64)),
        "tensor_float64": z(dtype=torch.float64),
        "first_on_meta": (z(device="meta"), z()),
        "tensor_on_meta": z(device="meta"),
        "none_inside": (z(), None),
        "int": 3,
        "wrong_batch": z(*shape[:-2], 5, shape[-1]),
        "empty_tuple": (),
    }


def _cases():
    for name in NAMES:
        for batched in (True, False):
            sequence = not name.endswith("Cell")
            shape = ((1, 2, 4) if batched else (1, 4)) if sequence else ((2, 4) if batched else (4,))
            for key in _states(shape):
                layout = "batched" if batched else "unbatched"
                yield pytest.param(name, batched, shape, key, id=f"{name}-{layout}-{key}")


@pytest.mark.parametrize("name,batched,shape,key", list(_cases()))
def test_malformed_state_raises_as_torch(name, batched, shape, key):
    sequence = not name.endswith("Cell")
    x_shape = ((5, 2, 3) if batched else (5, 3)) if sequence else ((2, 3) if batched else (3,))

    def call(module_type):
        torch.manual_seed(0)
        getattr(module_type, name)(3, 4)(torch.randn(x_shape), _states(shape)[key])

    expected = _outcome(lambda: call(torch.nn))
    assert _outcome(lambda: call(fastrnn)) == expected
