"""Module behaviour a drop-in owes: parameters, state_dict, repr, pickling, conversion, dropout, memory."""

import gc
import io
import resource
import warnings

import pytest
import torch
from torch.func import functional_call

import fastrnn


def test_parameters_and_state_dict_are_torchs():
    torch.manual_seed(0)
    ref = torch.nn.RNN(4, 6, num_layers=2, bidirectional=True)
    torch.manual_seed(0)
    ours = fastrnn.RNN(4, 6, num_layers=2, bidirectional=True)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    for (_, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters()):
        assert torch.equal(a, b)  # same init, same RNG draws
    ours.load_state_dict(ref.state_dict(), strict=True)
    ref.load_state_dict(ours.state_dict(), strict=True)
    assert repr(ours).replace("fastrnn_RNN", "RNN") == repr(ref)


def test_repr_and_cell_state_dict():
    assert repr(fastrnn.RNN(3, 5, 2, "relu", bias=False, batch_first=True, dropout=0.5)) == (
        "RNN(3, 5, num_layers=2, bias=False, batch_first=True, dropout=0.5)"
    )
    ref = torch.nn.RNNCell(3, 5, nonlinearity="relu")
    ours = fastrnn.RNNCell(3, 5, nonlinearity="relu")
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert repr(ours) == repr(ref)


def test_from_torch_and_to_torch_round_trip():
    ref = torch.nn.RNN(3, 5, 2, "relu", batch_first=True, bidirectional=True, dtype=torch.float64)
    ours = fastrnn.RNN.from_torch(ref)
    assert isinstance(ours, fastrnn.RNN) and ours.nonlinearity == "relu" and ours.batch_first
    back = ours.to_torch()
    assert type(back) is torch.nn.RNN
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(ours(x)[0], ref(x)[0])
    torch.testing.assert_close(back(x)[0], ref(x)[0])
    cell = torch.nn.RNNCell(3, 5, bias=False)
    assert torch.equal(fastrnn.RNNCell.from_torch(cell).to_torch().weight_hh, cell.weight_hh)


def test_save_load_and_pickle():
    ours = fastrnn.RNN(3, 5, 2)
    buffer = io.BytesIO()
    torch.save(ours, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    x = torch.randn(4, 2, 3)
    assert torch.equal(loaded(x)[0], ours(x)[0])


def test_flatten_parameters_is_silent_and_harmless():
    ours = fastrnn.RNN(3, 5)
    before = [p.clone() for p in ours.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours.flatten_parameters()
        ours(torch.randn(2, 1, 3))
    assert all(torch.equal(a, b) for a, b in zip(before, ours.parameters()))


def test_weights_are_read_at_call_time():
    ours = fastrnn.RNN(3, 5)
    x = torch.randn(4, 2, 3)
    first = ours(x)[0]
    with torch.no_grad():
        ours.weight_hh_l0.mul_(0.5)
    assert not torch.equal(ours(x)[0], first)
    ours.weight_ih_l0 = torch.nn.Parameter(torch.zeros(5, 3))
    ours.bias_ih_l0 = torch.nn.Parameter(torch.zeros(5))
    ours.bias_hh_l0 = torch.nn.Parameter(torch.zeros(5))
    assert torch.equal(ours(x)[0], torch.zeros(4, 2, 5))
    params = {name: torch.zeros_like(p) for name, p in ours.named_parameters()}
    assert torch.equal(functional_call(ours, params, (x,))[0], torch.zeros(4, 2, 5))


def test_dropout_with_one_layer_warns_like_torch():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        fastrnn.RNN(3, 5, dropout=0.2)


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_double_backward_gradgradcheck(use_backend, backend, nonlinearity):
    use_backend(backend)
    torch.manual_seed(0)
    ours = fastrnn.RNN(3, 4, 2, nonlinearity, bidirectional=True, dtype=torch.float64)
    x = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    hx = torch.randn(4, 2, 4, dtype=torch.float64, requires_grad=True)
    weights = [p.detach().requires_grad_(True) for p in ours.parameters()]
    names = [n for n, _ in ours.named_parameters()]

    def f(x, hx, *ws):
        out, h_n = functional_call(ours, dict(zip(names, ws)), (x, hx))
        return out, h_n

    assert torch.autograd.gradgradcheck(f, (x, hx, *weights))


def test_double_backward_matches_reference_autograd(use_backend):
    use_backend("cpp")
    ref = torch.nn.RNN(3, 4, dtype=torch.float64)
    ours = fastrnn.RNN.from_torch(ref)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    second = []
    for module in (ref, ours):
        (g,) = torch.autograd.grad(module(x)[0].pow(2).sum(), x, create_graph=True)
        second.append(torch.autograd.grad(g.pow(2).sum(), [x, *module.parameters()]))
    for a, b in zip(*second):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend", ["cpp", "reference"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_third_order_gradients_match_torch(use_backend, backend, packed):
    # torch's CPU RNN is differentiable to any order; so is fastrnn's (the third order through torch.func).
    use_backend(backend)
    torch.manual_seed(0)
    ref = torch.nn.RNN(3, 4, 2, bidirectional=True, dtype=torch.float64)
    ours = fastrnn.RNN.from_torch(ref)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    if packed:
        x = torch.nn.utils.rnn.pack_padded_sequence(x, [4, 2])
    results = []
    for module in (ref, ours):
        leaf = (x.data if packed else x).clone().requires_grad_()
        run_input = x._replace(data=leaf) if packed else leaf
        out, h_n = module(run_input)
        loss = (out.data if packed else out).pow(3).sum() + h_n.pow(2).sum()
        (g1,) = torch.autograd.grad(loss, leaf, create_graph=True)
        (g2,) = torch.autograd.grad(g1.pow(2).sum(), leaf, create_graph=True)
        results.append(torch.autograd.grad(g2.sin().sum(), [leaf, *module.parameters()]))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("config", [dict(), dict(num_layers=2), dict(batch_first=True), dict(bidirectional=True)],
                         ids=["L1", "L2", "batch_first", "bi"])
def test_output_edited_in_place_before_backward_like_torch(config):
    # The output must not be the tensor the op saved for backward: torch's output is a fresh tensor too.
    ref = torch.nn.RNN(3, 4, **config)
    ours = fastrnn.RNN.from_torch(ref)
    x = torch.randn(5, 2, 3)
    grads = []
    for module in (ref, ours):
        module.zero_grad()
        out, h_n = module(x)
        out.mul_(2)
        h_n.add_(1)
        (out.pow(2).sum() + h_n.pow(2).sum()).backward()
        grads.append([p.grad for p in module.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_memory_stays_flat_over_repeated_training_steps():
    ours = fastrnn.RNN(32, 64, num_layers=2, bidirectional=True)
    x = torch.randn(200, 8, 32)

    def step():
        out, h_n = ours(x)
        (out.sum() + h_n.sum()).backward()

    for _ in range(5):
        step()
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(40):
        step()
    gc.collect()
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 20 * 1024, f"peak RSS grew by {grown_kib} KiB over 40 steps"


def test_module_to_float64_and_back():
    ours = fastrnn.RNN(3, 5).double()
    assert ours(torch.randn(2, 1, 3, dtype=torch.float64))[0].dtype == torch.float64
    ours.float()
    assert ours(torch.randn(2, 1, 3))[0].dtype == torch.float32


class _Net(torch.nn.Module):
    def __init__(self, rnn_class):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 6)
        self.rnn = rnn_class(6, 8, num_layers=2, bidirectional=True, batch_first=True)
        self.cell = (fastrnn.RNNCell if rnn_class is fastrnn.RNN else torch.nn.RNNCell)(16, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, ids):
        out, _ = self.rnn(self.embed(ids))
        return self.head(self.cell(out[:, -1]))


@pytest.mark.parametrize("direction", ["torch_to_fastrnn", "fastrnn_to_torch"])
def test_checkpoint_files_move_between_torch_and_fastrnn(tmp_path, direction):
    source_cls, target_cls = (
        (torch.nn.RNN, fastrnn.RNN) if direction == "torch_to_fastrnn" else (fastrnn.RNN, torch.nn.RNN)
    )
    torch.manual_seed(0)
    source = _Net(source_cls)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": source.state_dict(), "epoch": 3}, path)
    target = _Net(target_cls)
    target.load_state_dict(torch.load(path, weights_only=True)["model"], strict=True)
    ids = torch.randint(0, 10, (4, 7))
    torch.testing.assert_close(target(ids), source(ids))


def test_whole_model_with_fastrnn_modules_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    net = _Net(fastrnn.RNN)
    path = tmp_path / "model.pt"
    torch.save(net, path)
    loaded = torch.load(path, weights_only=False)
    assert isinstance(loaded.rnn, fastrnn.RNN) and isinstance(loaded.cell, fastrnn.RNNCell)
    ids = torch.randint(0, 10, (2, 5))
    assert torch.equal(loaded(ids), net(ids))


def test_non_contiguous_input_and_hidden_state():
    ref = torch.nn.RNN(3, 5, 2, bidirectional=True, dtype=torch.float64)
    ours = fastrnn.RNN.from_torch(ref)
    x = torch.randn(6, 8, 3, dtype=torch.float64)[:, ::2]  # strided batch
    hx = torch.randn(4, 5, 4, dtype=torch.float64).transpose(1, 2)  # [4, 4, 5], transposed storage
    assert not x.is_contiguous() and not hx.is_contiguous()
    for got, want in zip(ours(x, hx), ref(x, hx)):
        torch.testing.assert_close(got, want)
