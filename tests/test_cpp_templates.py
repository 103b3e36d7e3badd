"""The C++ layer ops are one step loop templated on the cell (csrc/recurrence.cpp, cells.h, schedule.h): properties
that hold bit for bit for every cell because the schedule is written once (packed input with equal lengths is the
padded input, a reversed layer is the forward layer on the flipped sequence, inference and training forwards and
the fused input projection walk the same steps), and one set of argument checks with one wording for every op.
The old-vs-new bitwise check of the whole grid is tests/layer_ops_bitwise.py (run by hand against a saved build)."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from fastrnn.gated_ops import _use_cpp

pytestmark = pytest.mark.skipif(not _use_cpp(torch.zeros(1)), reason="the C++ extension is not available")

ops = torch.ops.fastrnn
T, B, H, IN = 6, 5, 24, 10
CELLS = ["rnn_tanh", "rnn_relu", "gru", "lstm", "lstm_proj"]
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "gru": 3, "lstm": 4, "lstm_proj": 4}
P_PROJ = 7


@pytest.fixture(params=[False, True], ids=["portable", "avx512"])
def zmm(request):
    """Runs the test with the AVX-512 step kernel off, then on; restores the setting."""
    was_on = ops._gated_zmm_kernel(request.param)
    yield request.param
    ops._gated_zmm_kernel(was_on)


def _weights(cell: str, dtype, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    G, P = GATES[cell] * H, P_PROJ if cell == "lstm_proj" else H

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=dtype) * scale

    return {"h0": randn(B, P), "c0": randn(B, H), "w_hh": randn(G, P, scale=P**-0.5), "b_hn": randn(H),
            "w_hr": randn(P, H, scale=H**-0.5) if cell == "lstm_proj" else None,
            "w_ih": randn(G, IN, scale=IN**-0.5), "bias": randn(G), "x": randn(T, B, IN), "xw": randn(T, B, G)}


def _forward(cell: str, w: dict, xw, batch_sizes=None, reverse=False):
    """The cell's training forward op on the projection xw: (y, h_n[, c_n])."""
    if cell.startswith("rnn"):
        return ops.rnn_fwd(xw, w["h0"], w["w_hh"], batch_sizes, reverse, int(cell == "rnn_relu"))
    if cell == "gru":
        return ops.gru_fwd(xw, w["h0"], w["w_hh"], w["b_hn"], batch_sizes, reverse)[:2]
    return ops.lstm_fwd(xw, w["h0"], w["c0"], w["w_hh"], w["w_hr"], batch_sizes, reverse)[:3]


def _assert_bitwise(got, want):
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape and torch.equal(g, w), f"output {i} differs"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("cell", CELLS)
def test_packed_equal_lengths_is_the_padded_call(cell, dtype, zmm):
    w = _weights(cell, dtype)
    for reverse in (False, True):
        padded = _forward(cell, w, w["xw"], reverse=reverse)
        packed = _forward(cell, w, w["xw"].reshape(T * B, -1), torch.full((T,), B), reverse)
        _assert_bitwise([packed[0].reshape(padded[0].shape), *packed[1:]], padded)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("cell", CELLS)
def test_reversed_layer_is_the_forward_layer_on_the_flipped_sequence(cell, dtype, zmm):
    w = _weights(cell, dtype, seed=1)
    reversed_ = _forward(cell, w, w["xw"], reverse=True)
    flipped = _forward(cell, w, w["xw"].flip(0))
    _assert_bitwise([reversed_[0].flip(0), *reversed_[1:]], flipped)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("cell", ["gru", "lstm", "lstm_proj"])
def test_inference_layer_and_training_forwards_walk_the_same_steps(cell, packed, zmm):
    """gru/lstm_infer (no workspace) and gru/lstm_layer_fwd (workspace) give the same bits from the layer input
    (both fuse the projection or both run at::linear first); from xw, infer equals fwd."""
    w = _weights(cell, torch.float32, seed=2)
    batch_sizes, x, xw = None, w["x"], w["xw"]
    if packed:
        batch_sizes = torch.tensor([5, 5, 4, 3, 3, 1])
        keep = torch.cat([torch.arange(n) + t * B for t, n in enumerate(batch_sizes.tolist())])
        x, xw = x.reshape(T * B, -1)[keep], xw.reshape(T * B, -1)[keep]
    if cell == "gru":
        infer = ops.gru_infer(x, w["w_ih"], w["bias"], w["h0"], w["w_hh"], w["b_hn"], batch_sizes, False)
        layer = ops.gru_layer_fwd(x, w["w_ih"], w["bias"], w["h0"], w["w_hh"], w["b_hn"], batch_sizes, False)
        from_xw = ops.gru_infer(xw, None, None, w["h0"], w["w_hh"], w["b_hn"], batch_sizes, False)
        fwd = ops.gru_fwd(xw, w["h0"], w["w_hh"], w["b_hn"], batch_sizes, False)
        _assert_bitwise(infer, layer[:2])
        _assert_bitwise(from_xw, fwd[:2])
    else:
        args = (w["h0"], w["c0"], w["w_hh"], w["w_hr"], batch_sizes, False)
        infer = ops.lstm_infer(x, w["w_ih"], w["bias"], *args)
        layer = ops.lstm_layer_fwd(x, w["w_ih"], w["bias"], *args)
        _assert_bitwise(infer, layer[:3])
        _assert_bitwise(ops.lstm_infer(xw, None, None, *args), ops.lstm_fwd(xw, *args)[:3])


@pytest.mark.parametrize("batch", [1, 3, 4])
@pytest.mark.parametrize("cell", ["gru", "lstm", "lstm_proj"])
def test_windowed_projection_is_the_per_step_projection(cell, batch):
    """A padded call with few rows a thread projects the next steps' inputs in one kernel call (cells.h, Window);
    a packed call of equal lengths projects each step on its own: the same bits, over several windows (37 steps)
    and both directions, inference and training forwards."""
    w = _weights(cell, torch.float32, seed=3)
    steps = 37
    x = torch.randn(steps, batch, IN, generator=torch.Generator().manual_seed(4))
    h0, c0 = w["h0"][:batch], w["c0"][:batch]
    rest = (h0, w["w_hh"], w["b_hn"]) if cell == "gru" else (h0, c0, w["w_hh"], w["w_hr"])
    name, sizes = "gru" if cell == "gru" else "lstm", torch.full((steps,), batch)
    for op in (f"{name}_infer", f"{name}_layer_fwd"):
        for reverse in (False, True):
            padded = getattr(ops, op)(x, w["w_ih"], w["bias"], *rest, None, reverse)
            packed = getattr(ops, op)(x.flatten(0, 1), w["w_ih"], w["bias"], *rest, sizes, reverse)
            _assert_bitwise([q.reshape(p.shape) for q, p in zip(packed, padded)], padded)


@pytest.mark.parametrize("shape", [(300, 1, 32), (40, 3, 24), (5, 1, 8)], ids=["row-kernel", "batch3", "tiny"])
@pytest.mark.parametrize("cell", CELLS)
def test_whole_stack_call_runs_the_layer_ops(cell, shape, zmm):
    """The C++ whole call of a module (stack_if_plain) runs each layer on the layer ops' own forward: its output and
    final states equal, bit for bit, the inference op's from the layer input with b_ih + b_hh (the GRU: b_hn
    apart) as the op's bias. The Elman's is rnn_fwd on mm_nn's projection where the call does not fuse it (one
    float row: the latency-bound row kernel in both)."""
    steps, batch, hidden = shape
    gates, proj = GATES[cell], P_PROJ if cell == "lstm_proj" else 0
    torch.manual_seed(5)
    module = {1: torch.nn.RNN, 3: torch.nn.GRU, 4: torch.nn.LSTM}[gates]
    kwargs = {"nonlinearity": cell[4:]} if gates == 1 else {"proj_size": proj} if proj else {}
    m = module(IN, hidden, **kwargs)
    x = torch.randn(steps, batch, IN)
    weights = [p.detach() for p in m._flat_weights]
    w_ih, w_hh, b_ih, b_hh = weights[:4]
    P = proj or hidden
    with torch.no_grad():
        out = ops_whole_call(gates, cell, x, weights, hidden, proj)
        h0 = torch.zeros(batch, P)
        if gates == 1:
            tiny = steps * batch * IN * hidden <= 1 << 16
            if tiny and zmm:  # the call fuses a tiny projection into the steps: no op gives it separately
                return
            xw = ops.mm_nn(x.flatten(0, 1), w_ih.t(), b_ih + b_hh).view(steps, batch, hidden)
            want = ops.rnn_fwd(xw, h0, w_hh, None, False, int(cell == "rnn_relu"))
        elif gates == 3:
            bias = torch.cat([b_ih[: 2 * hidden] + b_hh[: 2 * hidden], b_ih[2 * hidden :]])
            want = ops.gru_infer(x, w_ih, bias, h0, w_hh, b_hh[2 * hidden :].clone(), None, False)
        else:
            want = ops.lstm_infer(x, w_ih, b_ih + b_hh, h0, torch.zeros(batch, hidden), w_hh,
                                  weights[4] if proj else None, None, False)
    _assert_bitwise([out[0], *(s[0] for s in out[1:])], want)


def ops_whole_call(gates, cell, x, weights, hidden, proj):
    """stack_if_plain on a one-layer module's weights: (output, h_n[, c_n])."""
    import importlib

    whole = importlib.import_module("fastrnn._C").stack_if_plain
    kind = {"rnn_tanh": 0, "rnn_relu": 1}.get(cell, gates)
    out = whole(kind, x, None, None, weights, True, 1, False, False, IN, hidden, proj)
    return [t for t in out if t is not None]


@pytest.fixture
def two_threads():
    """Two threads for the test (the units split needs them), whatever the machine; restores the count."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def split_mode():
    """Sets when layers split the units between threads (0 never, 1 where it pays, 2 wherever it can) and
    returns how many layer calls split since the last setting; the test runs only where the AVX-512 step kernel's
    panels exist (the split works on them), and the mode the process had is restored."""
    try:
        ops._gated_step_mm(torch.zeros(1, 1), torch.zeros(1, 1), None, 1)
    except RuntimeError:
        pytest.skip("no AVX-512 step kernel on this CPU")
    before, _ = ops._split_units(1)
    yield lambda mode: ops._split_units(mode)[1]
    ops._split_units(before)


def _layer_ops(cell: str, w: dict, xw, dy, batch_sizes, reverse: bool) -> list:
    """Every layer op of the cell on xw, all outputs: the training forward (with ws), for GRU / LSTM the inference
    forward, and the backward of dy (with dh_n = dc_n = h0, dh0 wanted)."""
    h0, w_hh = w["h0"], w["w_hh"]
    if cell.startswith("rnn"):
        act = int(cell == "rnn_relu")
        y, hn = ops.rnn_fwd(xw, h0, w_hh, batch_sizes, reverse, act)
        return [(y, hn), ops.rnn_bwd(dy, h0, y, w_hh, batch_sizes, reverse, act, True)]
    if cell == "gru":
        args = (h0, w_hh, w["b_hn"], batch_sizes, reverse)
        y, hn, ws = ops.gru_fwd(xw, *args)
        back = ops.gru_bwd(dy, h0, y, ws, h0, w_hh, batch_sizes, reverse, True)
        return [(y, hn, ws), ops.gru_infer(xw, None, None, *args), back]
    args = (h0, w["c0"], w_hh, None, batch_sizes, reverse)
    y, hn, cn, ws = ops.lstm_fwd(xw, *args)
    back = ops.lstm_bwd(dy, h0, h0, ws, w["c0"], w_hh, None, batch_sizes, reverse, True)
    return [(y, hn, cn, ws), ops.lstm_infer(xw, None, None, *args), back]


@pytest.mark.parametrize("batch", [1, 3, 6])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "gru", "lstm"])
def test_units_split_between_threads_gives_the_row_split_bits(cell, dtype, batch, two_threads, split_mode):
    """run_forward_units / run_backward_units (each thread a share of every gate's units for all rows, the threads
    meeting once a step) give run_forward's / run_backward's bits (each thread its rows): every output is the same
    chain of FMAs. Padded and packed with unequal lengths, both directions, training and inference forwards and the
    backward; H is two of the kernel's panels."""
    hidden = 128 if dtype == torch.float32 else 64
    gen = torch.Generator().manual_seed(6)
    G = GATES[cell] * hidden
    w = {"h0": torch.randn(batch, hidden, generator=gen, dtype=dtype),
         "c0": torch.randn(batch, hidden, generator=gen, dtype=dtype),
         "w_hh": torch.randn(G, hidden, generator=gen, dtype=dtype) * hidden**-0.5,
         "b_hn": torch.randn(hidden, generator=gen, dtype=dtype)}
    xw = torch.randn(9, batch, G, generator=gen, dtype=dtype)
    dy = torch.randn(9, batch, hidden, generator=gen, dtype=dtype)
    lengths = torch.tensor([9, 5, 3, 3, 2, 1][:batch])
    packed, packed_dy = pack_padded_sequence(xw, lengths), pack_padded_sequence(dy, lengths)
    for inputs, grads, sizes in ((xw, dy, None), (packed.data, packed_dy.data, packed.batch_sizes)):
        for reverse in (False, True):
            split_mode(0)
            rows = _layer_ops(cell, w, inputs, grads, sizes, reverse)
            assert split_mode(2) == 0
            units = _layer_ops(cell, w, inputs, grads, sizes, reverse)
            assert split_mode(1) == len(units), "the calls did not split the units"
            for got, want in zip(units, rows):
                _assert_bitwise(got, want)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("kind", ["RNN", "GRU", "LSTM"])
def test_modules_with_the_units_split_match_torch(kind, bidirectional, two_threads, split_mode):
    """fastrnn's modules with every layer splitting the units, forward and backward, against torch's in float64:
    outputs, final states and the gradients of the input and every weight, padded (B = 1) and packed (B = 3)."""
    import fastrnn

    torch.manual_seed(7)
    m = getattr(torch.nn, kind)(16, 64, num_layers=2, bidirectional=bidirectional).double()
    fm = getattr(fastrnn, kind).from_torch(m)
    split_mode(2)
    for batch, lengths in ((1, None), (3, torch.tensor([7, 4, 2]))):
        x = torch.randn(7, batch, 16, dtype=torch.float64)
        outs = []
        for module in (m, fm):
            module.zero_grad()
            xg = x.clone().requires_grad_()
            inp = xg if lengths is None else pack_padded_sequence(xg, lengths)
            y, state = module(inp)
            y = y if lengths is None else y.data
            states = state if isinstance(state, tuple) else (state,)
            (y.sum() + sum((s * s).sum() for s in states)).backward()
            outs.append([y, *states, xg.grad, *(p.grad for p in module.parameters())])
        for got, want in zip(outs[1], outs[0]):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    assert split_mode(1) > 0, "no layer split its units"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_units_split_where_rows_leave_a_thread_idle(dtype, two_threads, split_mode):
    """Where the split pays (csrc/recurrence.cpp, split_units): a W_hh of 1 MB with fewer rows than threads need,
    or of 4 MB with 2 rows a thread; not a small weight, and not with many rows a thread."""
    def splits(batch, hidden):
        w_hh = torch.randn(4 * hidden, hidden, dtype=dtype) * hidden**-0.5
        xw = torch.randn(2, batch, 4 * hidden, dtype=dtype)
        h0 = torch.zeros(batch, hidden, dtype=dtype)
        split_mode(1)
        ops.lstm_infer(xw, None, None, h0, h0, w_hh, None, None, False)
        return split_mode(1) == 1

    # W_hh [4H, H]: float32 256 KB, 1 MB, 4 MB; float64 128 KB, 1.1 MB, 4.5 MB (H a multiple of its 32-wide panels)
    small, mb, four_mb = (128, 256, 512) if dtype == torch.float32 else (64, 192, 384)
    assert splits(1, mb) and splits(3, mb) and splits(4, four_mb)
    assert not splits(1, small) and not splits(4, mb) and not splits(64, four_mb)


WIDTH = {"rnn_fwd": 4, "gru_fwd": 12, "lstm_fwd": 16}  # G at H = 4


def _call(op: str, **change):
    """Calls a forward op on good arguments (T=3, B=2, H=4) with `change` applied."""
    a = {"xw": torch.randn(3, 2, WIDTH[op]), "h0": torch.randn(2, 4), "c0": torch.randn(2, 4), "batch_sizes": None,
         "w_hh": torch.randn(WIDTH[op], 4)}
    a.update(change)
    if op == "rnn_fwd":
        return ops.rnn_fwd(a["xw"], a["h0"], a["w_hh"], a["batch_sizes"], False, 0)
    if op == "gru_fwd":
        return ops.gru_fwd(a["xw"], a["h0"], a["w_hh"], None, a["batch_sizes"], False)
    return ops.lstm_fwd(a["xw"], a["h0"], a["c0"], a["w_hh"], None, a["batch_sizes"], False)


@pytest.mark.parametrize("op", ["rnn_fwd", "gru_fwd", "lstm_fwd"])
def test_every_op_words_the_same_bad_argument_the_same_way(op):
    with pytest.raises(RuntimeError, match=rf"^fastrnn::{op}: argument 'h0' must be a Tensor, got None"):
        _call(op, h0=None)
    with pytest.raises(RuntimeError, match=rf"^fastrnn::{op}: expected h0 of shape \[2, 4\], got \[3, 4\]"):
        _call(op, h0=torch.randn(3, 4))
    with pytest.raises(RuntimeError, match=rf"^fastrnn::{op}: the tensors must share a dtype, got Float \(xw\) and "
                                           r"Double \(h0\)"):
        _call(op, h0=torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=rf"^fastrnn::{op}: the CPU op supports float32 and float64, got Half"):
        _call(op, xw=torch.randn(3, 2, 4).half())
    with pytest.raises(RuntimeError, match=rf"^fastrnn::{op}: xw must have \d+ features, got 5"):
        _call(op, xw=torch.randn(3, 2, 5))
    with pytest.raises(RuntimeError, match=r"^fastrnn: batch_sizes must be non-increasing, got 2 then 3 at step 1"):
        _call(op, xw=torch.randn(5, WIDTH[op]), batch_sizes=torch.tensor([2, 3]))
    with pytest.raises(RuntimeError, match=rf"^fastrnn::{op}: batch_sizes must be a 1-D int64 CPU tensor"):
        _call(op, batch_sizes=torch.tensor([2, 1], dtype=torch.int32))
