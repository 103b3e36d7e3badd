"""Derivatives of every order and mode, for all six modules, against torch's module on the same weights in
float64: mixed second partials (input, state and every parameter, pairwise) through torch.func grad of grad,
vjp of vjp, jacrev of jacrev, hessian, jvp, jacfwd, vmap of grad of grad, eager forward-mode AD, eager
create_graph, and batched gradients (is_grads_batched, vectorized jacobian, gradcheck / gradgradcheck with
check_batched_grad as torch's own module tests run them). A silent wrong derivative fails here."""

from __future__ import annotations

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, vjp, vmap

import fastrnn

# name, constructor kwargs, whether it is a sequence module, whether the state is (h, c)
MODULES = [
    pytest.param("RNN", {}, id="RNN"),
    pytest.param("RNN", {"num_layers": 2, "bidirectional": True}, id="RNN-2layer-bi"),
    pytest.param("GRU", {}, id="GRU"),
    pytest.param("GRU", {"num_layers": 2, "bidirectional": True}, id="GRU-2layer-bi"),
    pytest.param("LSTM", {}, id="LSTM"),
    pytest.param("LSTM", {"proj_size": 3}, id="LSTM-proj"),
    pytest.param("RNNCell", {}, id="RNNCell"),
    pytest.param("GRUCell", {}, id="GRUCell"),
    pytest.param("LSTMCell", {}, id="LSTMCell"),
]
T, B, IN, H = 4, 2, 3, 4


class Case:
    """torch's module and fastrnn's on the same float64 weights, fixed inputs and a loss that weighs every
    output element differently (so no derivative vanishes by symmetry)."""

    def __init__(self, name: str, kwargs: dict):
        torch.manual_seed(0)
        self.name, self.sequence, self.lstm = name, not name.endswith("Cell"), "LSTM" in name
        self.torch = getattr(torch.nn, name)(IN, H, dtype=torch.float64, **kwargs)
        self.fast = getattr(fastrnn, name)(IN, H, dtype=torch.float64, **kwargs)
        self.fast.load_state_dict(self.torch.state_dict())
        layers = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
        out_h = kwargs.get("proj_size") or H
        lead = (layers, B) if self.sequence else (B,)
        self.args = {"input": torch.randn(*((T, B, IN) if self.sequence else (B, IN)), dtype=torch.float64),
                     "h0": torch.randn(*lead, out_h, dtype=torch.float64)}
        if self.lstm:
            self.args["c0"] = torch.randn(*lead, H, dtype=torch.float64)
        self.args.update({k: v.detach().clone() for k, v in self.torch.named_parameters()})
        self.weights = [torch.randn_like(t) for t in self._outputs(self.torch, self.args)]

    def _outputs(self, module, args: dict) -> list:
        params = {k: v for k, v in args.items() if k not in ("input", "h0", "c0")}
        state = (args["h0"], args["c0"]) if self.lstm else args["h0"]
        out = functional_call(module, params, (args["input"], state))
        if not self.sequence:
            return list(out) if self.lstm else [out]
        y, h_n = out
        return [y, *h_n] if self.lstm else [y, h_n]

    def loss(self, module):
        """A scalar function of the dict of inputs and parameters, smooth enough to have second derivatives."""

        def f(args: dict) -> torch.Tensor:
            outs = self._outputs(module, args)
            return sum((torch.tanh(o) * w).sum() for o, w in zip(outs, self.weights))

        return f


def assert_trees_close(got, want, what: str) -> None:
    if isinstance(want, dict):
        for key in want:
            assert_trees_close(got[key], want[key], f"{what}[{key}]")
    elif isinstance(want, (tuple, list)):
        for i, (g, w) in enumerate(zip(got, want)):
            assert_trees_close(g, w, f"{what}[{i}]")
    else:
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9, msg=lambda m: f"{what}: {m}")


def both(case: Case, compute):
    return compute(case.loss(case.fast)), compute(case.loss(case.torch))


@pytest.mark.parametrize("name,kwargs", MODULES)
def test_mixed_second_partials_through_grad_of_grad(name, kwargs):
    """Row a of the Hessian times a random vector, for every argument a, against every argument b."""
    case = Case(name, kwargs)
    torch.manual_seed(1)
    vectors = {k: torch.randn_like(v) for k, v in case.args.items()}

    def compute(f):
        rows = {}
        for a in case.args:
            rows[a] = grad(lambda args, a=a: (grad(f)(args)[a] * vectors[a]).sum())(case.args)
        return rows

    got, want = both(case, compute)
    assert_trees_close(got, want, "d/db <d f/da, v>")


@pytest.mark.parametrize("name,kwargs", MODULES)
def test_vjp_of_vjp(name, kwargs):
    case = Case(name, kwargs)

    def compute(f):
        def first(args):
            _, pullback = vjp(f, args)
            return pullback(torch.ones((), dtype=torch.float64))[0]

        out, pullback = vjp(first, case.args)
        return pullback({k: torch.ones_like(v) for k, v in out.items()})[0]

    got, want = both(case, compute)
    assert_trees_close(got, want, "vjp(vjp)")


@pytest.mark.parametrize("name,kwargs", MODULES)
@pytest.mark.parametrize("wrt", ["input", "h0", "weight_hh"])
def test_hessian_and_jacrev_of_jacrev(name, kwargs, wrt):
    case = Case(name, kwargs)
    key = next(k for k in case.args if k.startswith(wrt))

    def compute(f):
        g = lambda t: f({**case.args, key: t})  # noqa: E731
        return hessian(g)(case.args[key]), jacrev(jacrev(g))(case.args[key])

    got, want = both(case, compute)
    assert_trees_close(got, want, f"hessian / jacrev(jacrev) wrt {key}")


@pytest.mark.parametrize("name,kwargs", MODULES)
def test_jvp_and_jacfwd(name, kwargs):
    case = Case(name, kwargs)
    torch.manual_seed(2)
    tangents = {k: torch.randn_like(v) for k, v in case.args.items()}

    def compute(f):
        value, derivative = jvp(f, (case.args,), (tangents,))
        return value, derivative, jacfwd(f)(case.args)

    got, want = both(case, compute)
    assert_trees_close(got, want, "jvp / jacfwd")


@pytest.mark.parametrize("name,kwargs", MODULES)
def test_vmap_of_grad_of_grad(name, kwargs):
    """Per-sample second derivatives: vmap over several inputs of d/dW_hh |dL/dx|^2, against a loop over torch's
    module (torch's own RNN modules fail under vmap of grad of grad)."""
    case = Case(name, kwargs)
    torch.manual_seed(3)
    inputs = torch.randn(3, *case.args["input"].shape, dtype=torch.float64)
    key = next(k for k in case.args if k.startswith("weight_hh"))

    def per_sample(f):
        def hvp(x):
            def inner(w):
                g = grad(lambda x_: f({**case.args, "input": x_, key: w}))(x)
                return (g * g).sum()

            return grad(inner)(case.args[key])

        return hvp

    got = vmap(per_sample(case.loss(case.fast)))(inputs)
    want = torch.stack([per_sample(case.loss(case.torch))(x) for x in inputs])
    assert_trees_close(got, want, "vmap(grad(grad))")


@pytest.mark.parametrize("name,kwargs", MODULES)
def test_eager_forward_mode_ad(name, kwargs):
    case = Case(name, kwargs)
    torch.manual_seed(4)
    tangents = {k: torch.randn_like(v) for k, v in case.args.items()}

    def compute(f):
        with fwAD.dual_level():
            duals = {k: fwAD.make_dual(v, tangents[k]) for k, v in case.args.items()}
            out = fwAD.unpack_dual(f(duals))
            return out.primal, out.tangent

    got, want = both(case, compute)
    assert want[1] is not None
    assert_trees_close(got, want, "forward AD")


@pytest.mark.parametrize("name,kwargs", MODULES)
def test_eager_create_graph_second_order(name, kwargs):
    case = Case(name, kwargs)

    def compute(f):
        args = {k: v.clone().requires_grad_() for k, v in case.args.items()}
        grads = torch.autograd.grad(f(args), list(args.values()), create_graph=True)
        penalty = sum((g * g).sum() for g in grads)
        return torch.autograd.grad(penalty, list(args.values()))

    got, want = both(case, compute)
    assert_trees_close(got, want, "eager grad of |grad|^2")


@pytest.mark.parametrize("name,kwargs", MODULES)
def test_batched_gradients(name, kwargs):
    """is_grads_batched and a vectorized jacobian (vmap over the backward pass) on the modules' eager calls."""
    case = Case(name, kwargs)
    torch.manual_seed(5)

    def compute(module):
        args = {k: v.clone().requires_grad_() for k, v in case.args.items()}
        outs = case._outputs(module, args)
        cotangents = [torch.randn(6, *o.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(i))
                      for i, o in enumerate(outs)]
        batched = torch.autograd.grad(outs, list(args.values()), cotangents, is_grads_batched=True)
        x = case.args["input"]
        jac = torch.autograd.functional.jacobian(lambda t: case._outputs(module, {**args, "input": t})[0], x,
                                                 vectorize=True)
        return batched, jac

    got, want = compute(case.fast), compute(case.torch)
    assert_trees_close(got, want, "batched gradients")


@pytest.mark.parametrize("name,kwargs", MODULES)
def test_gradcheck_with_batched_grad(name, kwargs):
    """What torch's own module tests run: gradcheck and gradgradcheck with check_batched_grad=True."""
    case = Case(name, kwargs)
    x = case.args["input"].clone().requires_grad_()
    h0 = case.args["h0"].clone().requires_grad_()
    module = case.fast

    def f(x, h0):
        state = (h0, case.args["c0"]) if case.lstm else h0
        out = module(x, state)
        return out[0] if isinstance(out, tuple) else out

    assert torch.autograd.gradcheck(f, (x, h0), check_batched_grad=True)
    assert torch.autograd.gradgradcheck(f, (x, h0), check_batched_grad=True)


@pytest.mark.parametrize("name,kwargs", MODULES)
def test_eager_backward_through_a_torch_func_grad(name, kwargs):
    """torch.func.grad over the module's own parameters (which eager autograd records), then an eager backward
    of a penalty on that gradient: a second order across the two levels, which the fast ops' functorch
    Functions cannot give (their backward is first-order), so such calls run the reference."""
    case = Case(name, kwargs)

    def compute(f):
        leaves = {k: v.clone().requires_grad_() for k, v in case.args.items()}
        g = grad(f)(leaves)
        penalty = sum((v * v).sum() for v in g.values())
        return torch.autograd.grad(penalty, list(leaves.values()))

    got, want = both(case, compute)
    assert_trees_close(got, want, "eager d/dp |torch.func.grad|^2")
