"""JAX: torch's RNN (tanh), GRU and LSTM layer as ``lax.scan`` under ``jax.jit``, float32, the same weights.

T, B, H: steps, batch, hidden size; x is [T, B, H_in]. Written as a JAX user who cares about speed would: the
input projection of every step is one GEMM before the scan, ``xw = x W_ih^T + b`` [T, B, G*H] (G = 1, 3, 4 gates;
the hidden bias folded in where torch's math allows it: all but the GRU's ``b_hn``, which sits inside
``r * (h W_hn^T + b_hn)``), and the scan carries only ``h`` (and the LSTM's ``c``). Gates in torch's order:
GRU r, z, n; LSTM i, f, g, o. Training is ``jax.grad`` of the sum of the output with respect to the input and
every parameter, one jitted function; its gradients come back under torch's parameter names.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
from jax import lax
from torch import Tensor, nn

from benchmarks.peers.contender import OUTPUTS, Contender

Params = dict[str, jax.Array]


def _projection(cell: str, p: Params, x: jax.Array) -> jax.Array:
    bias = p["bias_ih_l0"] + p["bias_hh_l0"]
    if cell == "gru":  # b_hn stays in the step, inside r * (...)
        hidden = p["bias_hh_l0"].shape[0] // 3
        bias = p["bias_ih_l0"] + p["bias_hh_l0"].at[2 * hidden:].set(0)
    return x @ p["weight_ih_l0"].T + bias


def _step(cell: str, p: Params):
    w_hh = p["weight_hh_l0"].T  # [H, G*H]

    def rnn(h, xw_t):
        h = jnp.tanh(xw_t + h @ w_hh)
        return h, h

    def gru(h, xw_t):
        hidden = h.shape[-1]
        hh = h @ w_hh
        r = jax.nn.sigmoid(xw_t[:, :hidden] + hh[:, :hidden])
        z = jax.nn.sigmoid(xw_t[:, hidden:2 * hidden] + hh[:, hidden:2 * hidden])
        n = jnp.tanh(xw_t[:, 2 * hidden:] + r * (hh[:, 2 * hidden:] + p["bias_hh_l0"][2 * hidden:]))
        h = (1 - z) * n + z * h
        return h, h

    def lstm(state, xw_t):
        h, c = state
        i, f, g, o = jnp.split(xw_t + h @ w_hh, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    return {"rnn": rnn, "gru": gru, "lstm": lstm}[cell]


def layer(cell: str, p: Params, x: jax.Array) -> dict[str, jax.Array]:
    """One layer over x [T, B, H_in]: output [T, B, H], h_n [1, B, H] (and the LSTM's c_n [1, B, H])."""
    h0 = jnp.zeros((x.shape[1], p["weight_hh_l0"].shape[1]), x.dtype)  # [B, H]
    final, output = lax.scan(_step(cell, p), (h0, h0) if cell == "lstm" else h0, _projection(cell, p, x))
    finals = final if cell == "lstm" else (final,)
    return dict(zip(OUTPUTS, (output, *(f[None] for f in finals))))


def jax_contender(cell: str, module: nn.Module, x: Tensor) -> Contender:
    params = {name: jnp.asarray(p.detach().numpy()) for name, p in module.named_parameters()}
    x_jax = jnp.asarray(x.numpy())
    forward = jax.jit(lambda p, x: layer(cell, p, x))

    def weighted_loss(p, x, weights):
        return sum((t * weights[name]).sum() for name, t in layer(cell, p, x).items())

    grads = jax.jit(jax.grad(lambda p, x: layer(cell, p, x)["output"].sum(), argnums=(0, 1)))
    weighted_grads = jax.jit(jax.value_and_grad(weighted_loss, argnums=(0, 1)))

    def tensors(arrays: dict[str, jax.Array]) -> dict[str, Tensor]:
        return {name: torch.from_numpy(np.array(a)) for name, a in arrays.items()}

    def train_results(weights: dict[str, Tensor]) -> dict[str, Tensor]:
        w = {name: jnp.asarray(t.float().numpy()) for name, t in weights.items()}
        _, (grad_p, grad_x) = weighted_grads(params, x_jax, w)
        found = tensors(forward(params, x_jax))
        found["grad_input"] = torch.from_numpy(np.array(grad_x))
        found.update({f"grad_{name}": torch.from_numpy(np.array(grad_p[name])) for name in params})
        return found

    return Contender(
        "jax", f"jax {jax.__version__} lax.scan, jit, {jax.devices()[0].platform}",
        infer=lambda: jax.block_until_ready(forward(params, x_jax)),
        results=lambda weights: tensors(forward(params, x_jax)),
        train=lambda: jax.block_until_ready(grads(params, x_jax)),
        train_results=train_results,
    )
