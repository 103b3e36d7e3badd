"""The gated ops' per-step matmul kernels (csrc/zmm_step_mm.h and the portable loop) on every row count of
their blocking, column tails, strided rows and both dtypes; and the whole ops with the AVX-512 kernel on and
off, against the float64 reference, on shapes that cross the kernels' size limits."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from fastrnn import gated_reference as ref

KERNELS = {0: "portable", 1: "avx512"}


@pytest.fixture(scope="module")
def ops():
    from fastrnn._cpp import load_cpp_ops

    missing = load_cpp_ops()
    if missing is not None:
        pytest.skip(missing)
    return torch.ops.fastrnn


@pytest.fixture(params=[False, True], ids=["avx512-off", "avx512-on"])
def zmm(request, ops):
    """The test runs with the AVX-512 step kernel off, then on (where the CPU has it); the setting is restored."""
    was_on = ops._gated_zmm_kernel(request.param)
    yield request.param
    ops._gated_zmm_kernel(was_on)


def _kernel_or_skip(ops, kernel):
    if kernel == 1:
        try:
            ops._gated_step_mm(torch.zeros(1, 1), torch.zeros(1, 1), None, 1)
        except RuntimeError:
            pytest.skip("no AVX-512 on this CPU")


# N: whole 4- and 8-vector blocks, and every kind of tail (1-8 vectors, partial last vector).
MM_SHAPES = [(64, 256), (32, 128), (7, 13), (33, 100), (128, 520), (5, 200), (3, 1), (16, 17), (40, 120), (8, 127)]


@pytest.mark.parametrize("kernel", list(KERNELS), ids=list(KERNELS.values()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("K,N", MM_SHAPES)
def test_step_mm_matches_float64_matmul(ops, kernel, dtype, K, N):
    _kernel_or_skip(ops, kernel)
    gen = torch.Generator().manual_seed(K * 1000 + N)
    for rows in [*range(1, 10), 13, 14, 20]:  # every row block (1-6) and each way the rest of the 6s splits
        # a's rows are strided (a view of a wider matrix), as the ops' rows of h are.
        a = torch.randn(rows, K + 3, generator=gen, dtype=dtype)[:, :K]
        b = torch.randn(K, N, generator=gen, dtype=dtype)
        init = torch.randn(rows, N, generator=gen, dtype=dtype)
        product = a.double() @ b.double()
        tol = (1e-5 if dtype == torch.float32 else 1e-13) * K
        # Without init the output starts as NaN: an element the kernel does not write fails.
        for start, want in ((None, product), (init, product + init.double())):
            got = ops._gated_step_mm(a, b, start, kernel)
            assert got.dtype == dtype
            torch.testing.assert_close(got.double(), want, rtol=0, atol=tol, msg=f"rows={rows}")


def _lstm_case(steps, batch, hidden, packed, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    batch_sizes = None
    lead = (steps, batch)
    if packed:
        lengths = sorted(torch.randint(1, steps + 1, (batch,), generator=gen).tolist(), reverse=True)
        lengths[0] = steps
        batch_sizes = torch.tensor([sum(1 for n in lengths if n > t) for t in range(steps)])
        lead = (int(batch_sizes.sum()),)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, dtype=dtype) * scale

    return (randn(*lead, 4 * hidden), randn(batch, hidden), randn(batch, hidden),
            randn(4 * hidden, hidden, scale=hidden**-0.5), batch_sizes)


# (batch, hidden): 1-9 rows (every remainder of the 4-row blocks), a hidden size that is no multiple of 16,
# and sizes above the portable loop's limit (there the kernel-off run takes the BLAS).
SHAPES = [(1, 5), (3, 33), (5, 16), (6, 20), (7, 40), (9, 18), (20, 70), (33, 64)]


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("batch,hidden", SHAPES, ids=[f"B={b},H={h}" for b, h in SHAPES])
def test_ops_match_float64_reference_with_either_kernel(ops, zmm, packed, batch, hidden):
    xw, h0, c0, w, batch_sizes = _lstm_case(6, batch, hidden, packed, torch.float32, batch * 100 + hidden)
    for reverse in (False, True):
        got = ops.lstm_fwd(xw, h0, c0, w, None, batch_sizes, reverse)
        want = ref.lstm_recurrence_ref(xw.double(), h0.double(), c0.double(), w.double(), None, batch_sizes,
                                       reverse)
        for name, g, r in zip(("y", "h_n", "c_n", "ws"), got, want):
            torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-5, msg=name)
        dy, dh_n, dc_n = torch.randn_like(got[0]), torch.randn_like(got[1]), torch.randn_like(got[2])
        got_b = ops.lstm_bwd(dy, dh_n, dc_n, got[3], c0, w, None, batch_sizes, reverse, True)
        want_b = ref.lstm_recurrence_bwd_ref(dy.double(), dh_n.double(), dc_n.double(), want[3], c0.double(),
                                             w.double(), None, batch_sizes, reverse)
        for name, g, r in zip(("da", "dh_all", "dh0", "dc0"), got_b, want_b):
            if g.numel():
                torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-4, msg=name)
        # The GRU's step matmuls go through the same kernel: [B, H] x [H, 3H] forward, [B, 3H] x [3H, H] back.
        b_hn = torch.randn(hidden)
        xg = xw[..., : 3 * hidden].contiguous()
        got_g = ops.gru_fwd(xg, h0, w[: 3 * hidden], b_hn, batch_sizes, reverse)
        want_g = ref.gru_recurrence_ref(xg.double(), h0.double(), w[: 3 * hidden].double(), b_hn.double(),
                                        batch_sizes, reverse)
        for name, g, r in zip(("y", "h_n", "ws"), got_g, want_g):
            torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-5, msg="gru " + name)
        got_gb = ops.gru_bwd(dy, dh_n, got_g[0], got_g[2], h0, w[: 3 * hidden], batch_sizes, reverse, True)
        want_gb = ref.gru_recurrence_bwd_ref(dy.double(), dh_n.double(), want_g[0], want_g[2], h0.double(),
                                             w[: 3 * hidden].double(), batch_sizes, reverse)
        for name, g, r in zip(("dxw", "dg", "dh0"), got_gb, want_gb):
            torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-4, msg="gru " + name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_lstm_infer_equals_lstm_fwd(ops, zmm, dtype):
    """The inference op (no workspace; the cell state carried in c_n) gives lstm_fwd's outputs bit for bit."""
    for batch, hidden, proj in ((1, 5, 0), (6, 20, 0), (9, 33, 7), (20, 70, 0)):
        for packed in (False, True):
            xw, h0, c0, w, batch_sizes = _lstm_case(7, batch, hidden, packed, dtype, batch + hidden)
            w_hr = None
            if proj:
                w_hr = torch.randn(proj, hidden, dtype=dtype) * hidden**-0.5
                h0, w = h0[:, :proj].contiguous(), torch.randn(4 * hidden, proj, dtype=dtype) * proj**-0.5
            for reverse in (False, True):
                want = ops.lstm_fwd(xw, h0, c0, w, w_hr, batch_sizes, reverse)[:3]
                got = ops.lstm_infer(xw, None, None, h0, c0, w, w_hr, batch_sizes, reverse)
                for name, g, r in zip(("y", "h_n", "c_n"), got, want):
                    assert torch.equal(g, r), (name, batch, hidden, proj, packed, reverse)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_lstm_infer_and_layer_fwd_project_the_input(ops, zmm, dtype):
    """lstm_infer(x, w_ih, bias) and the training forward lstm_layer_fwd: the step kernel's own x W_ih^T + bias
    (or one GEMM first: kernel off, or B < 4 beyond a tiny call, the last case; recurrence.cpp's fuse_projection)
    against the float64 reference of the projected input, the workspace that lstm_bwd reads included; the two
    ops' outputs agree bit for bit."""
    tol = 2e-5 if dtype == torch.float32 else 1e-12
    for batch, inputs, hidden, proj in ((1, 3, 5, 0), (6, 17, 20, 0), (9, 40, 33, 7), (20, 70, 70, 0), (2, 64, 48, 0)):
        for packed in (False, True):
            xw, h0, c0, w, batch_sizes = _lstm_case(7, batch, hidden, packed, dtype, batch + inputs)
            x = torch.randn(*xw.shape[:-1], inputs, dtype=dtype)
            w_ih = torch.randn(4 * hidden, inputs, dtype=dtype) * inputs**-0.5
            w_hr = None
            if proj:
                w_hr = torch.randn(proj, hidden, dtype=dtype) * hidden**-0.5
                h0, w = h0[:, :proj].contiguous(), torch.randn(4 * hidden, proj, dtype=dtype) * proj**-0.5
            for bias in (None, torch.randn(4 * hidden, dtype=dtype)):
                for reverse in (False, True):
                    got = ops.lstm_infer(x, w_ih, bias, h0, c0, w, w_hr, batch_sizes, reverse)
                    trained = ops.lstm_layer_fwd(x, w_ih, bias, h0, c0, w, w_hr, batch_sizes, reverse)
                    d = [t.double() if t is not None else None for t in (x, w_ih, bias, h0, c0, w, w_hr)]
                    want = ref.lstm_recurrence_ref(torch.nn.functional.linear(*d[:3]), *d[3:], batch_sizes,
                                                   reverse)
                    for name, g, r in zip(("y", "h_n", "c_n", "ws"), trained, want):
                        torch.testing.assert_close(g.double(), r, rtol=tol, atol=tol,
                                                   msg=f"{name} B={batch} I={inputs} H={hidden} P={proj}")
                    for name, g, r in zip(("y", "h_n", "c_n"), got, trained):
                        assert torch.equal(g, r), (name, batch, hidden, proj, packed, reverse)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_gru_infer_equals_gru_fwd_and_projects_the_input(ops, zmm, dtype):
    """gru_infer(xw): gru_fwd's y and h_n bit for bit; gru_infer(x, w_ih, bias) and the training forward
    gru_layer_fwd (its workspace included): against the float64 reference, and equal to each other. The last
    case projects in one GEMM first (B < 4 beyond a tiny call), the others in the step kernel where it has AVX-512."""
    tol = 2e-5 if dtype == torch.float32 else 1e-12
    for batch, inputs, hidden in ((1, 3, 5), (6, 17, 20), (9, 40, 33), (20, 70, 70), (2, 64, 48)):
        for packed in (False, True):
            xw, h0, _, w, batch_sizes = _lstm_case(7, batch, hidden, packed, dtype, batch + inputs)
            xw, w = xw[..., : 3 * hidden].contiguous(), w[: 3 * hidden].contiguous()
            x = torch.randn(*xw.shape[:-1], inputs, dtype=dtype)
            w_ih = torch.randn(3 * hidden, inputs, dtype=dtype) * inputs**-0.5
            biases = ((None, None), (torch.randn(hidden, dtype=dtype), torch.randn(3 * hidden, dtype=dtype)))
            for b_hn, bias in biases:
                for reverse in (False, True):
                    want = ops.gru_fwd(xw, h0, w, b_hn, batch_sizes, reverse)[:2]
                    got = ops.gru_infer(xw, None, None, h0, w, b_hn, batch_sizes, reverse)
                    for name, g, r in zip(("y", "h_n"), got, want):
                        assert torch.equal(g, r), (name, batch, hidden, packed, reverse)
                    got = ops.gru_infer(x, w_ih, bias, h0, w, b_hn, batch_sizes, reverse)
                    trained = ops.gru_layer_fwd(x, w_ih, bias, h0, w, b_hn, batch_sizes, reverse)
                    d = [t.double() if t is not None else None for t in (x, w_ih, bias, h0, w, b_hn)]
                    want = ref.gru_recurrence_ref(torch.nn.functional.linear(*d[:3]), *d[3:], batch_sizes, reverse)
                    for name, g, r in zip(("y", "h_n", "ws"), trained, want):
                        torch.testing.assert_close(g.double(), r, rtol=tol, atol=tol,
                                                   msg=f"{name} B={batch} I={inputs} H={hidden}")
                    for name, g, r in zip(("y", "h_n"), got, trained):
                        assert torch.equal(g, r), (name, batch, hidden, packed, reverse)


@pytest.mark.parametrize("cls", [fastrnn.GRU, fastrnn.LSTM])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_module_inference_equals_training_forward(ops, cls, packed):
    """Under no_grad the module takes the inference op; its outputs are the training forward's (up to the
    rounding of the input projection, which the inference op's step kernel makes in its own order)."""
    torch.manual_seed(0)
    module = cls(6, 12, num_layers=2, bidirectional=True)
    x = torch.randn(9, 5, 6)
    if packed:
        x = pack_padded_sequence(x, torch.tensor([9, 7, 7, 3, 1]))
    out, state = module(x)
    with torch.no_grad():
        out_i, state_i = module(x)
    if packed:
        out, out_i = out.data, out_i.data
    pairs = [("output", out, out_i)]
    pairs += list(zip(("h_n", "c_n"), state, state_i)) if cls is fastrnn.LSTM else [("h_n", state, state_i)]
    for name, a, b in pairs:
        torch.testing.assert_close(b, a.detach(), rtol=1e-5, atol=1e-6, msg=name)
