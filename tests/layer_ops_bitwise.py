"""Old-vs-new bitwise check of the C++ CPU code (csrc/): runs every layer op (rnn_fwd/bwd, gru_*, lstm_* with
and without projection) and the C++ whole-call and cell entries on fixed seeds with one built library, and
records a SHA-256 of every output's bytes. Run it once with the library before a change and once after:

    cp fastrnn/_C*.so /tmp/old_C.so                        # before the change
    python tests/layer_ops_bitwise.py /tmp/old_C.so /tmp/old.json
    python tests/layer_ops_bitwise.py fastrnn/_C*.so /tmp/new.json   # after rebuilding
    python tests/layer_ops_bitwise.py --compare /tmp/old.json /tmp/new.json

Each run loads the library on its own (a separate process per library: two builds register the same ops), so
the package's Python code is not used. Grid: float32/float64, forward/reversed, padded/packed, B = 1/3/64,
H = 8/32/200 (the register kernels and the BLAS path), the AVX-512 step kernel on and off, 2 threads. Outputs
the ops document as meaningless (dh0 without need_dh0) are not recorded. Not a pytest module: it needs a
second build; tests/test_cpp_templates.py holds the ordinary parity tests.
"""

import argparse
import hashlib
import importlib.machinery
import importlib.util
import itertools
import json
import sys
import zlib

import torch

DTYPES = {"f32": torch.float32, "f64": torch.float64}
STEPS = 5


def load(path: str):
    """The built library as a Python module (its ops land in torch.ops.fastrnn)."""
    loader = importlib.machinery.ExtensionFileLoader("_C", path)
    spec = importlib.util.spec_from_file_location("_C", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def fingerprint(t) -> list:
    if t is None:
        return ["None"]
    t = t.detach().contiguous()
    digest = hashlib.sha256(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"").hexdigest()[:24]
    total = float(t.double().nan_to_num(0.0).sum()) if t.is_floating_point() and t.numel() else 0.0
    return [digest, list(t.shape), str(t.dtype), total]


class Case:
    """Seeded inputs for one grid point."""

    def __init__(self, name: str, dtype, batch: int, packed: bool):
        self.gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        self.dtype, self.batch = dtype, batch
        self.batch_sizes = None
        self.lead = (STEPS, batch)
        if packed:
            lengths = sorted(torch.randint(1, STEPS + 1, (batch,), generator=self.gen).tolist(), reverse=True)
            lengths[0] = STEPS
            self.batch_sizes = torch.tensor([sum(1 for n in lengths if n > t) for t in range(STEPS)])
            self.lead = (int(self.batch_sizes.sum()),)

    def randn(self, *shape, scale=1.0):
        return torch.randn(*shape, generator=self.gen, dtype=self.dtype) * scale

    def seq(self, width, scale=1.0):
        return self.randn(*self.lead, width, scale=scale)


def run_grid(mod) -> dict:
    ops = torch.ops.fastrnn
    torch.set_num_threads(2)
    out = {}
    grid = itertools.product(DTYPES, (False, True), (False, True), (1, 3, 64), (8, 32, 200), (True, False))
    for dname, reverse, packed, B, H, zmm in grid:
        ops._gated_zmm_kernel(zmm)
        key = f"{dname}-rev{int(reverse)}-packed{int(packed)}-B{B}-H{H}-zmm{int(zmm)}"
        c = Case(key, DTYPES[dname], B, packed)
        bs = c.batch_sizes
        IN = H // 2 + 3
        for act in (0, 1):
            xw, h0, w = c.seq(H), c.randn(B, H), c.randn(H, H, scale=H**-0.5)
            y, hn = ops.rnn_fwd(xw, h0, w, bs, reverse, act)
            out[f"{key}/rnn_fwd{act}"] = [fingerprint(y), fingerprint(hn)]
            dy, dhn = c.seq(H), c.randn(B, H)
            for need in (True, False):
                dz, dh0 = ops.rnn_bwd(dy, dhn, y, w, bs, reverse, act, need)
                out[f"{key}/rnn_bwd{act}{int(need)}"] = [fingerprint(dz)] + ([fingerprint(dh0)] if need else [])
        # GRU
        xw, h0, w = c.seq(3 * H), c.randn(B, H), c.randn(3 * H, H, scale=H**-0.5)
        b_hn = c.randn(H)
        x, w_ih, bias = c.seq(IN), c.randn(3 * H, IN, scale=IN**-0.5), c.randn(3 * H)
        for hn_bias in (b_hn, None):
            tag = "b" if hn_bias is not None else "n"
            y, hn, ws = ops.gru_fwd(xw, h0, w, hn_bias, bs, reverse)
            out[f"{key}/gru_fwd{tag}"] = [fingerprint(y), fingerprint(hn), fingerprint(ws)]
            out[f"{key}/gru_infer_xw{tag}"] = [fingerprint(t) for t in ops.gru_infer(xw, None, None, h0, w, hn_bias,
                                                                                       bs, reverse)]
            for b in (bias, None):
                btag = tag + ("b" if b is not None else "n")
                out[f"{key}/gru_infer{btag}"] = [fingerprint(t) for t in ops.gru_infer(x, w_ih, b, h0, w, hn_bias,
                                                                                         bs, reverse)]
                out[f"{key}/gru_layer{btag}"] = [fingerprint(t) for t in ops.gru_layer_fwd(x, w_ih, b, h0, w,
                                                                                             hn_bias, bs, reverse)]
            dy, dhn = c.seq(H), c.randn(B, H)
            for need in (True, False):
                dxw, dg, dh0 = ops.gru_bwd(dy, dhn, y, ws, h0, w, bs, reverse, need)
                out[f"{key}/gru_bwd{tag}{int(need)}"] = [fingerprint(dxw), fingerprint(dg)] + (
                    [fingerprint(dh0)] if need else [])
        # LSTM, without and with a projection (P < H)
        for P in (H, max(1, H // 2 - 1)):
            proj = P != H
            tag = f"P{int(proj)}"
            xw, h0, c0 = c.seq(4 * H), c.randn(B, P), c.randn(B, H)
            w, w_hr = c.randn(4 * H, P, scale=P**-0.5), (c.randn(P, H, scale=H**-0.5) if proj else None)
            x, w_ih, bias = c.seq(IN), c.randn(4 * H, IN, scale=IN**-0.5), c.randn(4 * H)
            y, hn, cn, ws = ops.lstm_fwd(xw, h0, c0, w, w_hr, bs, reverse)
            out[f"{key}/lstm_fwd{tag}"] = [fingerprint(t) for t in (y, hn, cn, ws)]
            out[f"{key}/lstm_infer_xw{tag}"] = [fingerprint(t) for t in ops.lstm_infer(xw, None, None, h0, c0, w,
                                                                                         w_hr, bs, reverse)]
            for b in (bias, None):
                btag = tag + ("b" if b is not None else "n")
                out[f"{key}/lstm_infer{btag}"] = [fingerprint(t) for t in ops.lstm_infer(x, w_ih, b, h0, c0, w,
                                                                                           w_hr, bs, reverse)]
                out[f"{key}/lstm_layer{btag}"] = [fingerprint(t) for t in ops.lstm_layer_fwd(x, w_ih, b, h0, c0, w,
                                                                                               w_hr, bs, reverse)]
            dy, dhn, dcn = c.seq(P), c.randn(B, P), c.randn(B, H)
            for need in (True, False):
                da, dh_all, dh0, dc0 = ops.lstm_bwd(dy, dhn, dcn, ws, c0, w, w_hr, bs, reverse, need)
                out[f"{key}/lstm_bwd{tag}{int(need)}"] = [fingerprint(t) for t in (da, dh_all, dc0)] + (
                    [fingerprint(dh0)] if need else [])
        if not packed and not reverse:
            out.update(run_entries(mod, c, key, H, IN))
    ops._gated_zmm_kernel(True)
    return out


def run_entries(mod, c: Case, key: str, H: int, IN: int) -> dict:
    """The whole-call and one-step entries (stack.cpp, cell.cpp: stack_if_plain, cell_if_plain)."""
    out = {}
    B = c.batch
    x = c.randn(STEPS, B, IN)
    for act in (0, 1):
        weights = [c.randn(H, IN, scale=IN**-0.5), c.randn(H, H, scale=H**-0.5), c.randn(H), c.randn(H)] * 2
        weights[4:] = [c.randn(H, IN, scale=IN**-0.5), c.randn(H, H, scale=H**-0.5), c.randn(H), c.randn(H)]
        hx = c.randn(2, B, H)
        with torch.no_grad():
            if hasattr(mod, "stack_forward"):
                got = mod.stack_forward(act, x, hx, None, weights[:8], None, True, 1, True, False)[:2]
            else:  # builds before the entry took every cell
                got = mod.rnn_stack_forward(x, hx, weights[:8], None, True, 1, True, act)
        out[f"{key}/rnn_stack{act}"] = [fingerprint(t) for t in got]
        params = [w.clone().requires_grad_() for w in weights[:4]]
        got = mod.stack_if_plain(act, x, hx[:1], None, params, True, 1, False, False, IN, H, 0)
        if got is not None:
            got = got[:2]  # c_n is None
            (got[0].sum() + got[1].sum()).backward()
            out[f"{key}/rnn_plain{act}"] = [fingerprint(t) for t in got] + [fingerprint(p.grad) for p in params]
        cell = {"weight_ih": params[0], "weight_hh": params[1], "bias_ih": params[2], "bias_hh": params[3]}
        with torch.no_grad():
            out[f"{key}/rnn_cell{act}"] = [fingerprint(mod.cell_if_plain(act, x[0], hx[0], None, cell))]
    for gates in (3, 4):
        G = gates * H
        weights = [c.randn(G, IN, scale=IN**-0.5), c.randn(G, H, scale=H**-0.5), c.randn(G), c.randn(G)]
        h0, c0 = c.randn(1, B, H), c.randn(1, B, H)
        with torch.no_grad():
            got = mod.stack_if_plain(gates, x, h0, c0 if gates == 4 else None, weights, True, 1, False, False, IN,
                                     H, 0)
        if got is not None:
            out[f"{key}/gated_plain{gates}"] = [fingerprint(t) for t in got]
        params = {"weight_ih": weights[0].clone().requires_grad_(), "weight_hh": weights[1].clone().requires_grad_(),
                  "bias_ih": weights[2], "bias_hh": weights[3]}
        got = mod.cell_if_plain(gates, x[0], h0[0], c0[0] if gates == 4 else None, params)
        if got is not None:
            got = got if isinstance(got, tuple) else (got,)
            sum(t.sum() for t in got).backward()
            out[f"{key}/gated_cell{gates}"] = [fingerprint(t) for t in got] + [
                fingerprint(params["weight_ih"].grad), fingerprint(params["weight_hh"].grad)]
    return out


def compare(old_path: str, new_path: str) -> int:
    with open(old_path) as f:
        old = json.load(f)
    with open(new_path) as f:
        new = json.load(f)
    differ = [k for k in old if k in new and old[k] != new[k]]
    missing = sorted(set(old) ^ set(new))
    for k in differ[:40]:
        print("DIFFERS", k, [(a[3], b[3]) for a, b in zip(old[k], new[k]) if a != b])
    print(f"{len(old)} old, {len(new)} new cases; {len(differ)} differ; {len(missing)} in one run only {missing[:8]}")
    return 1 if differ or missing else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", action="store_true", help="compare two result files instead")
    parser.add_argument("first", help="the built library (_C*.so), or with --compare the old result file")
    parser.add_argument("second", help="where to write the results, or with --compare the new result file")
    args = parser.parse_args()
    if args.compare:
        return compare(args.first, args.second)
    results = run_grid(load(args.first))
    with open(args.second, "w") as f:
        json.dump(results, f)
    print(f"{len(results)} cases written to {args.second}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
