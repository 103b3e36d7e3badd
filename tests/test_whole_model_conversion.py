"""fastrnn.from_torch / fastrnn.to_torch on whole models: every torch RNN-family module swapped, nothing else."""

import gc

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import fastrnn

TORCH_CLASSES = (nn.RNN, nn.GRU, nn.LSTM, nn.RNNCell, nn.GRUCell, nn.LSTMCell)
FAST_CLASSES = (fastrnn.RNN, fastrnn.GRU, fastrnn.LSTM, fastrnn.RNNCell, fastrnn.GRUCell, fastrnn.LSTMCell)


class Net(nn.Module):
    """All six classes under a Sequential, a ModuleList and a ModuleDict nested in a Sequential."""

    def __init__(self, dtype: torch.dtype = torch.float64):
        super().__init__()
        kw = {"dtype": dtype}
        self.front = nn.Sequential(nn.Linear(4, 4, **kw), nn.RNN(4, 5, nonlinearity="relu", **kw))
        self.stack = nn.ModuleList([nn.GRU(5, 6, num_layers=2, bidirectional=True, **kw),
                                    nn.LSTM(12, 4, proj_size=3, batch_first=True, **kw)])
        self.cells = nn.Sequential(nn.ModuleDict({"rnn": nn.RNNCell(3, 3, bias=False, **kw),
                                                  "gru": nn.GRUCell(3, 3, **kw),
                                                  "lstm": nn.LSTMCell(3, 2, **kw)}))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [T, N, 4]
        y, _ = self.front[1](self.front[0](x))
        y, _ = self.stack[0](y)
        y, _ = self.stack[1](y.transpose(0, 1))  # [N, T, 3]
        cells = self.cells[0]
        h, hc = None, None
        out = []
        for x_t in y.unbind(1):
            h = cells["gru"](cells["rnn"](x_t, h), h)
            hc = cells["lstm"](h, hc)
            out.append(hc[0])
        return torch.stack(out)  # [T, N, 2]


def run(model: nn.Module) -> dict[str, torch.Tensor]:
    """The output and every parameter's gradient, by name."""
    torch.manual_seed(1)
    x = torch.randn(7, 3, 4, dtype=torch.float64, requires_grad=True)
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.square().sum().backward()
    grads = {f"grad {n}": p.grad.clone() for n, p in model.named_parameters()}
    return {"output": out.detach(), "grad input": x.grad, **grads}


def assert_same_results(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-12, atol=1e-12, msg=key)


def classes(model: nn.Module) -> set[type]:
    return {parametrize.type_before_parametrizations(m) for m in model.modules()}


def test_round_trip_keeps_outputs_gradients_and_state_dict():
    torch.manual_seed(0)
    model = Net()
    expected = run(model)
    fast = fastrnn.from_torch(model)
    assert classes(fast) & set(TORCH_CLASSES) == set()
    assert set(FAST_CLASSES) <= classes(fast)
    assert list(fast.state_dict()) == list(model.state_dict())
    assert_same_results(run(fast), expected)
    back = fastrnn.to_torch(fast)
    assert classes(back) & set(FAST_CLASSES) == set()
    assert set(TORCH_CLASSES) <= classes(back)
    assert list(back.state_dict()) == list(model.state_dict())
    assert_same_results(run(back), expected)


def test_a_copy_leaves_the_original_untouched_and_shares_no_storage():
    model = Net()
    before = {n: t.clone() for n, t in model.state_dict().items()}
    types = [type(m) for m in model.modules()]
    fast = fastrnn.from_torch(model)
    assert fast is not model
    assert [type(m) for m in model.modules()] == types
    original = {t.untyped_storage().data_ptr() for t in model.state_dict().values()}
    assert all(t.untyped_storage().data_ptr() not in original for t in fast.state_dict().values())
    with torch.no_grad():
        for p in fast.parameters():
            p.add_(1.0)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_in_place_swaps_the_submodules_and_keeps_the_parameter_objects():
    model = Net()
    params = list(model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    expected = run(model)
    assert fastrnn.from_torch(model, inplace=True) is model
    assert type(model.stack[0]) is fastrnn.GRU and type(model.cells[0]["lstm"]) is fastrnn.LSTMCell
    assert all(a is b for a, b in zip(model.parameters(), params)) and len(list(model.parameters())) == len(params)
    assert_same_results(run(model), expected)
    optimizer.step()  # the optimizer holds the same objects, so the step moves the converted model
    assert not torch.equal(run(model)["output"], expected["output"])
    assert fastrnn.to_torch(model, inplace=True) is model
    assert type(model.stack[0]) is nn.GRU and all(a is b for a, b in zip(model.parameters(), params))


def test_a_module_of_the_six_classes_itself_is_returned_converted():
    lstm = nn.LSTM(3, 4, num_layers=2, dtype=torch.float64)
    fast = fastrnn.from_torch(lstm)
    assert type(fast) is fastrnn.LSTM and type(lstm) is nn.LSTM
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(fast(x)[0], lstm(x)[0], rtol=1e-12, atol=1e-12)
    same = fastrnn.from_torch(lstm, inplace=True)
    assert type(same) is fastrnn.LSTM and same.weight_hh_l1 is lstm.weight_hh_l1
    cell = fastrnn.to_torch(fastrnn.GRUCell(3, 4))
    assert type(cell) is nn.GRUCell


def test_device_dtype_and_training_mode_are_kept():
    model = nn.ModuleDict({"a": nn.GRU(3, 4, dtype=torch.float64), "b": nn.RNNCell(3, 4, dtype=torch.float16),
                           "c": nn.LSTM(3, 4, device="meta")})
    model.train()
    model["b"].eval()
    fast = fastrnn.from_torch(model)
    assert (fast["a"].weight_hh_l0.dtype, fast["b"].weight_hh.dtype) == (torch.float64, torch.float16)
    assert fast["c"].weight_hh_l0.is_meta and not fast["a"].weight_hh_l0.is_meta
    assert [m.training for m in fast.modules()] == [m.training for m in model.modules()] == [True, True, False, True]
    back = fastrnn.to_torch(fast.eval())
    assert not any(m.training for m in back.modules())
    assert back["c"].weight_hh_l0.is_meta and back["b"].weight_hh.dtype == torch.float16


def test_parametrizations_are_kept():
    model = Net()
    parametrizations.orthogonal(model.stack[0], "weight_hh_l1_reverse")
    parametrizations.weight_norm(model.cells[0]["lstm"], "weight_hh")
    parametrizations.weight_norm(model.front[0], "weight")  # a parametrized module that is not converted
    expected = run(model)
    keys = list(model.state_dict())
    assert "stack.0.parametrizations.weight_hh_l1_reverse.original" in keys
    for inplace in (False, True):
        fast = fastrnn.from_torch(model, inplace=inplace)
        gru, cell = fast.stack[0], fast.cells[0]["lstm"]
        assert isinstance(gru, fastrnn.GRU) and parametrize.is_parametrized(gru, "weight_hh_l1_reverse")
        assert isinstance(cell, fastrnn.LSTMCell) and parametrize.is_parametrized(cell, "weight_hh")
        assert list(fast.state_dict()) == keys
        results = run(fast)
        assert_same_results(results, expected)
        assert results["grad stack.0.parametrizations.weight_hh_l1_reverse.original"].abs().sum() > 0
        back = fastrnn.to_torch(fast)
        assert type(back.stack[0]).__bases__ == (nn.GRU,) and parametrize.is_parametrized(back.stack[0])
        assert_same_results(run(back), expected)


def test_hooks_are_kept_and_called_with_the_new_module():
    calls = []
    model = Net()
    gru, cell = model.stack[0], model.cells[0]["gru"]
    handles = [
        gru.register_forward_pre_hook(lambda m, args, kwargs: calls.append(("pre", type(m))), with_kwargs=True),
        gru.register_forward_hook(lambda m, args, out: calls.append(("forward", type(m)))),
        gru.register_full_backward_hook(lambda m, gin, gout: calls.append(("backward", type(m), gin[0].shape))),
        cell.register_state_dict_post_hook(lambda m, sd, prefix, meta: calls.append(("state_dict", type(m)))),
        cell.register_load_state_dict_pre_hook(lambda m, *rest: calls.append(("load", type(m)))),
    ]
    fast = fastrnn.from_torch(model, inplace=True)
    del gru, cell
    gc.collect()  # the load_state_dict hook held a weak reference to the old cell
    run(fast)
    fast.load_state_dict(fast.state_dict())
    assert calls == [("pre", fastrnn.GRU), ("forward", fastrnn.GRU), ("backward", fastrnn.GRU, (7, 3, 5)),
                     ("state_dict", fastrnn.GRUCell), ("load", fastrnn.GRUCell)]
    for handle in handles:  # the handles still reach the hooks
        handle.remove()
    calls.clear()
    run(fast)
    fast.load_state_dict(fast.state_dict())
    assert calls == []


def test_hooks_survive_a_copy_and_the_way_back():
    calls = []
    model = nn.Sequential(nn.LSTM(3, 4))
    model[0].register_forward_hook(lambda m, args, out: calls.append(type(m)))
    fastrnn.to_torch(fastrnn.from_torch(model))[0](torch.randn(2, 1, 3))
    assert calls == [nn.LSTM]
    fastrnn.from_torch(model)[0](torch.randn(2, 1, 3))
    assert calls == [nn.LSTM, fastrnn.LSTM]


def test_a_non_full_backward_hook_is_refused_before_anything_changes():
    model = Net()
    model.cells[0]["rnn"].register_backward_hook(lambda m, gin, gout: None)
    with pytest.raises(ValueError, match=r"cells\.0\.rnn .*non-full backward hook.*register_full_backward_hook"):
        fastrnn.from_torch(model, inplace=True)
    assert classes(model) & set(FAST_CLASSES) == set()


def test_old_style_weight_norm_is_refused_with_the_way_out():
    model = nn.Sequential(nn.GRU(3, 4))
    with pytest.warns(FutureWarning, match="deprecated"):
        torch.nn.utils.weight_norm(model[0], "weight_hh_l0")
    with pytest.raises(ValueError, match=r"weight_hh_l0.*weight_hh_l0_g.*parametrizations\.weight_norm"):
        fastrnn.from_torch(model)


def test_subclasses_are_left_as_they_are_with_a_warning():
    class Tagged(nn.LSTM):
        def tag(self) -> str:
            return "mine"

    class FastTagged(fastrnn.GRU):
        pass

    model = nn.Sequential(Tagged(3, 4), nn.GRU(3, 4))
    with pytest.warns(UserWarning, match=r"0 is a .*Tagged, a subclass of torch\.nn\.modules\.rnn\.LSTM"):
        fast = fastrnn.from_torch(model)
    assert type(fast[0]) is Tagged and fast[0].tag() == "mine" and type(fast[1]) is fastrnn.GRU
    with pytest.warns(UserWarning, match=r"FastTagged, a subclass of fastrnn\.modules\.GRU"):
        back = fastrnn.to_torch(nn.Sequential(FastTagged(3, 4)))
    assert type(back[0]) is FastTagged


def test_fastrnn_modules_are_left_as_they_are():
    model = nn.Sequential(fastrnn.RNN(3, 4), nn.RNNCell(3, 4))
    first = model[0]
    assert fastrnn.from_torch(model, inplace=True)[0] is first
    torch_cell = nn.GRUCell(3, 3)
    assert fastrnn.to_torch(nn.Sequential(torch_cell), inplace=True)[0] is torch_cell


def test_a_shared_submodule_becomes_one_shared_drop_in():
    shared = nn.GRU(3, 4)
    model = nn.ModuleDict({"a": shared, "b": nn.Sequential(shared), "c": nn.Linear(2, 2)})
    for inplace in (False, True):
        fast = fastrnn.from_torch(model, inplace=inplace)
        assert type(fast["a"]) is fastrnn.GRU and fast["a"] is fast["b"][0]
        assert len(list(fast.parameters())) == len(list(model.parameters()))
    back = fastrnn.to_torch(fast)
    assert type(back["a"]) is nn.GRU and back["a"] is back["b"][0]
