"""NaN and inf propagate as in torch.nn.RNN; float32 tanh stays in [-1, 1], odd, within 2 ulp.

A divergence detector (``isnan(loss)``) must fire with fastrnn exactly when it fires with torch, so NaN
positions in outputs and gradients are compared with torch's, not only values.
"""

import pytest
import torch

import fastrnn

NAN, INF = float("nan"), float("inf")
CPU_BACKENDS = ["cpp", "reference"]


def _ulp_error(y: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """|y - ref| in units of the float32 spacing at ref (the spacing below 1 where ref rounds to +-1)."""
    rf = ref.float().abs()
    spacing = torch.nextafter(rf, torch.full_like(rf, 2.0)) - rf
    spacing = torch.where(rf >= 1, torch.tensor(2.0**-24), spacing).double()
    return (y.double() - ref).abs() / spacing


@pytest.fixture
def cpp_op(use_backend):
    use_backend("cpp")
    # One step, one row per value: h0 = 0 and W_hh = 0 make z the pre-activation.
    return lambda z, act=0: torch.ops.fastrnn.rnn_fwd(
        z.reshape(1, -1, 1), torch.zeros(z.numel(), 1, dtype=z.dtype), torch.zeros(1, 1, dtype=z.dtype), None,
        False, act,
    )[0].flatten()


def test_float32_tanh_bounded_odd_and_within_two_ulp(cpp_op):
    z = torch.linspace(-12, 12, 2_000_001)
    y = cpp_op(z)
    assert y.abs().max().item() <= 1.0
    assert torch.equal(cpp_op(-z), -y)
    assert _ulp_error(y, torch.tanh(z.double())).max().item() <= 2.0
    # z = 8.216387748718262 gave 1.0000001 (so 1 - y * y < 0) before.
    assert cpp_op(torch.tensor([8.216387748718262])).item() <= 1.0


def test_float32_tanh_near_zero_and_denormals(cpp_op):
    tiny = torch.tensor([1e-4, 1e-6, 3e-8, 1e-30, 1e-40, 1.4e-45, 0.0, -0.0])
    y = cpp_op(tiny)
    assert _ulp_error(y[:-3], torch.tanh(tiny[:-3].double())).max().item() <= 2.0
    assert torch.equal(y[-3:], tiny[-3:])


def test_float32_tanh_exactly_one_where_torch_is(cpp_op):
    # Every float32 above the first z where torch's tanh rounds to 1, up to 20.
    start = torch.tensor(8.9).view(torch.int32).item()
    z = torch.arange(start, torch.tensor(20.0).view(torch.int32).item(), 97, dtype=torch.int32).view(torch.float32)
    exact = torch.tanh(z) == 1
    assert exact.any()
    assert torch.all(cpp_op(z)[exact] == 1) and torch.all(cpp_op(-z)[exact] == -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("act", [0, 1], ids=["tanh", "relu"])
def test_nan_in_nan_out_and_inf_saturates(cpp_op, dtype, act):
    z = torch.tensor([NAN, INF, -INF, 2.0, -2.0], dtype=dtype)
    ref = torch.tanh(z) if act == 0 else torch.relu(z)
    torch.testing.assert_close(cpp_op(z, act), ref, equal_nan=True)


def _nan_pattern(module, x, hx):
    x = x.clone().requires_grad_()
    hx = hx.clone().requires_grad_()
    out, h_n = module(x, hx)
    (out.sum() + h_n.sum()).backward()
    tensors = {"output": out, "h_n": h_n, "grad_input": x.grad, "grad_hx": hx.grad}
    tensors.update({f"grad_{n}": p.grad for n, p in module.named_parameters()})
    return {k: v.detach() for k, v in tensors.items()}


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("where", ["input", "hx", "weight_hh", "inf_minus_inf", "inf_hx"])
def test_nonfinite_values_propagate_like_torch(use_backend, backend, dtype, nonlinearity, where):
    use_backend(backend)
    gen = torch.Generator().manual_seed(3)
    ref = torch.nn.RNN(3, 6, num_layers=2, bidirectional=True, nonlinearity=nonlinearity, dtype=dtype)
    x = torch.randn(5, 2, 3, generator=gen, dtype=dtype)
    hx = torch.randn(4, 2, 6, generator=gen, dtype=dtype)
    if where == "input":
        x[1, 0, 1] = NAN
    elif where == "hx":
        hx[1, 1, 2] = NAN
    elif where == "weight_hh":
        with torch.no_grad():
            ref.weight_hh_l0[2, 3] = NAN
    elif where == "inf_minus_inf":
        x[2, 1, 0], x[2, 1, 1] = INF, -INF
        with torch.no_grad():
            ref.weight_ih_l0[:, 1] = ref.weight_ih_l0[:, 0]
    else:
        hx[0, 0, 0] = INF
    ours = fastrnn.RNN.from_torch(ref)
    want, got = _nan_pattern(ref, x, hx), _nan_pattern(ours, x, hx)
    for key, expected in want.items():
        assert torch.equal(got[key].isnan(), expected.isnan()), f"{key}: NaN positions differ from torch"
        finite = expected.isfinite()
        torch.testing.assert_close(got[key][finite], expected[finite], msg=key)


def test_nan_input_gives_nan_like_torch():
    x = torch.tensor([[[NAN]]])
    assert torch.isnan(torch.nn.RNN(1, 1)(x)[0]).all()
    assert torch.isnan(fastrnn.RNN(1, 1)(x)[0]).all()


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnncell_keeps_nan(nonlinearity):
    cell = fastrnn.RNNCell(3, 4, nonlinearity=nonlinearity)
    x = torch.randn(2, 3)
    x[0, 0] = NAN
    expected = cell.to_torch()(x)
    got = cell(x)
    assert torch.equal(got.isnan(), expected.isnan()) and got.isnan().any()


def test_saturated_units_give_gradients_with_torchs_error():
    # Inputs x1e3 saturate every unit: 1 - y*y must never go negative (it did when tanh returned 1 + 1 ulp).
    gen = torch.Generator().manual_seed(0)
    ref = torch.nn.RNN(4, 8, num_layers=2, bidirectional=True)
    ours = fastrnn.RNN.from_torch(ref)
    x = torch.randn(20, 3, 4, generator=gen) * 1e3
    oracle = _nan_pattern(ref.double(), x.double(), torch.zeros(4, 3, 8, dtype=torch.float64))
    ref.float()
    base = _nan_pattern(ref, x, torch.zeros(4, 3, 8))
    got = _nan_pattern(ours, x, torch.zeros(4, 3, 8))
    for key, want in oracle.items():
        err = (got[key].double() - want).abs().max().item()
        err_torch = (base[key].double() - want).abs().max().item()
        assert err <= 2 * err_torch + 1e-6 * max(1.0, want.abs().max().item()), key


def _family_nan_pattern(module, name: str, x, h, c):
    """The RNN's _nan_pattern for any of the six modules (LSTM state (h, c); cells return h' or (h', c'))."""
    x, h, c = (t.clone().requires_grad_() for t in (x, h, c))
    out = module(x, (h, c) if "LSTM" in name else h)
    if name.endswith("Cell"):
        outs = dict(zip(("h1", "c1"), out)) if "LSTM" in name else {"h1": out}
    else:
        outs = {"output": out[0], **(dict(zip(("h_n", "c_n"), out[1])) if "LSTM" in name else {"h_n": out[1]})}
    sum(o.sum() for o in outs.values()).backward()
    tensors = {**outs, "grad_input": x.grad, "grad_hx": h.grad}
    if "LSTM" in name:
        tensors["grad_cx"] = c.grad
    tensors.update({f"grad_{n}": p.grad for n, p in module.named_parameters()})
    return {k: v.detach() for k, v in tensors.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("where", ["input_nan", "hx_nan", "weight_hh_nan", "inf_minus_inf", "hx_inf", "hx_minus_inf",
                                   "weight_hh_inf", "input_inf"])
@pytest.mark.parametrize("name", ["GRU", "LSTM", "RNNCell", "GRUCell", "LSTMCell"])
def test_nonfinite_values_propagate_like_torch_in_every_module(name, where, dtype):
    """Exact NaN positions in outputs and every gradient against torch's module (a GRU with inf in h0 gave no
    NaN where torch's gives 27: its float sigmoid returned 4e-38 where torch's is exactly 0, and 0 * inf)."""
    gen = torch.Generator().manual_seed(3)
    sequence = not name.endswith("Cell")
    kwargs = {"num_layers": 2, "bidirectional": True} if sequence else {}
    ref = getattr(torch.nn, name)(3, 6, dtype=dtype, **kwargs)
    x = torch.randn(*((5, 2, 3) if sequence else (2, 3)), generator=gen, dtype=dtype)
    h = torch.randn(*((4, 2, 6) if sequence else (2, 6)), generator=gen, dtype=dtype)
    c = torch.randn(h.shape, generator=gen, dtype=dtype)
    w_hh = ref.weight_hh_l0 if sequence else ref.weight_hh
    flat_x, flat_h = x.view(-1), h.view(-1)
    with torch.no_grad():
        if where == "input_nan":
            flat_x[4] = NAN
        elif where == "input_inf":
            flat_x[4] = INF
        elif where == "hx_nan":
            flat_h[7] = NAN
        elif where == "hx_inf":
            flat_h[0] = INF
        elif where == "hx_minus_inf":
            flat_h[9] = -INF
        elif where == "weight_hh_nan":
            w_hh[2, 3] = NAN
        elif where == "weight_hh_inf":
            w_hh[1, 2] = INF
        else:
            flat_x[0], flat_x[1] = INF, -INF
            w_ih = ref.weight_ih_l0 if sequence else ref.weight_ih
            w_ih[:, 1] = w_ih[:, 0]
    ours = getattr(fastrnn, name).from_torch(ref)
    want, got = _family_nan_pattern(ref, name, x, h, c), _family_nan_pattern(ours, name, x, h, c)
    assert any(v.isnan().any() for v in want.values())
    for key, expected in want.items():
        assert torch.equal(got[key].isnan(), expected.isnan()), f"{key}: NaN positions differ from torch"
        finite = expected.isfinite()
        torch.testing.assert_close(got[key][finite], expected[finite], msg=key)
