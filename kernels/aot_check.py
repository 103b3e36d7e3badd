"""Compiles every Triton kernel variant the launcher can pick for a GPU architecture, without that GPU.

    python -m fastrnn.kernels.aot_check [--arch 90] [--quick] [--no-spills] [--ttgir DIR]
    bash scripts/aot_check_pinned.sh [args]    # the same under the GPU machine's Triton (3.6), own venv

The interpreter forgives what the GPU compiler does not (power-of-two aranges, tl.dot shapes and dtypes,
types in loops), so CI compiles each variant through to a cubin for sm_90 (H100/H200) and prints the
registers, spills and shared memory each uses. Variants are compiled as the runtime specialises them:
every pointer 16-byte aligned (``tt.divisibility = 16``), integer arguments divisible by 16 marked so, an
integer equal to 1 folded to a constant (``do_not_specialize`` arguments excepted), and with the launcher's
num_warps. Must run without TRITON_INTERPRET=1.

``--no-spills`` fails if any variant spills: every single-tier autotune config the pruned candidate list
can pick, and every multi-tier geometry kernels.plan can pick, persistent and per step.

Whatever the flags, the run fails if a single-tier variant with W_IN_REGS=True has any ``ttg.local_alloc``
or ``ttg.local_load`` in its TTGIR: that path promises W_hh in registers for all steps, and Triton would
otherwise stage it through shared memory silently (as it does for tl.dot's operands).

It also fails if any variant computes a pointer offset with a 32-bit multiplication (``offset_violations``
on the TTIR): ``row * H`` or ``t * B * H`` pass 2^31 on large tensors, and a wrapped offset is an illegal
address that kills the process's CUDA context. ``--offsets`` runs only that check, on the TTIR (seconds,
no ptxas), over every variant.
"""

from __future__ import annotations

import argparse
import glob
import inspect
import itertools
import os
import re
import subprocess
import sys
import tempfile
from typing import Optional

# (name, torch dtype name, pointer type, FP32_DOT, PRECISION, tanh mode)
MODES = {
    "fp32": ("float32", "*fp32", True, "ieee", 0),
    "tf32": ("float32", "*fp32", True, "tf32", 0),
    "fp16": ("float16", "*fp16", False, "ieee", 1),
    "bf16": ("bfloat16", "*bf16", False, "ieee", 1),
}
INT_POINTERS = {"p_batch_sizes": "*i32", "p_counter": "*i32", "p_error": "*i32", "p_offsets": "*i64",
                "p_state": "*fp32", "p_dh": "*fp32"}


def _params(fn) -> list[str]:
    return list(inspect.signature(fn.fn if hasattr(fn, "fn") else fn).parameters)


def _jit(fn):
    """The JITFunction under any autotuner."""
    while not hasattr(fn, "do_not_specialize") and hasattr(fn, "fn"):
        fn = fn.fn
    return fn


def specialise(fn, pointer_type: str, constexprs: dict, ints: dict) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) as the runtime builds them for these integer argument values."""
    jit = _jit(fn)
    no_spec = {jit.arg_names[i] if isinstance(i, int) else i for i in jit.do_not_specialize}
    sig, consts, attrs = {}, dict(constexprs), {}
    for index, name in enumerate(_params(jit)):
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.startswith("p_"):
            sig[name] = INT_POINTERS.get(name, pointer_type)
            attrs[(index,)] = [["tt.divisibility", 16]]
        else:
            value = ints.get(name, 17)
            if value == 1 and name not in no_spec:
                sig[name] = "constexpr"
                consts[name] = 1
            else:
                sig[name] = "i32"
                if value % 16 == 0 and name not in no_spec:
                    attrs[(index,)] = [["tt.divisibility", 16]]
    return sig, consts, attrs


def _single_variants(quick: bool):
    from fastrnn.kernels import rnn_single

    configs = rnn_single._configs()
    flags = [(True, False)] if quick else list(itertools.product((False, True), (False, True)))
    classes = (1, 16) if quick else (1, 2, 4, 8, 16)
    modes = ("fp32", "bf16") if quick else tuple(MODES)
    for mode, block_h, (packed, reverse), b_class in itertools.product(modes, (16, 32, 64, 128), flags, classes):
        _, pointer, fp32_dot, precision, tanh = MODES[mode]
        regs = rnn_single.w_in_regs(b_class, mode)
        for config in rnn_single.tile_candidates(configs, b_class, mode, block_h, regs):
            block_b = config.kwargs["BLOCK_B"]
            common = dict(REVERSE=reverse, PACKED=packed, W_IN_REGS=regs, FP32_DOT=fp32_dot, PRECISION=precision,
                          BLOCK_H=block_h, BLOCK_B=block_b)
            ints = dict(H=block_h, B=b_class, B_CLASS=b_class, T=1000)
            yield (rnn_single._rnn_fwd_single_kernel, mode, pointer, dict(common, ACTIVATION=0, TANH=tanh), ints,
                   config.num_warps)
            yield rnn_single._rnn_bwd_single_kernel, mode, pointer, dict(common, ACTIVATION=1), ints, config.num_warps


def multi_plans(quick: bool) -> list[tuple[str, object, int, int]]:
    """(mode, plan, H, B) for every distinct geometry kernels.plan picks over the shapes the multi tier
    serves (H past the single tier up to 4096, batches 1..256)."""
    from fastrnn.kernels import plan as planner
    from fastrnn.kernels import rnn_single

    seen, found = set(), []
    hiddens = (160, 512, 2048, 4096) if quick else (129, 160, 256, 300, 512, 1024, 2048, 3000, 4096)
    batches = (1, 3, 64, 256) if quick else (1, 2, 3, 4, 8, 16, 32, 64, 128, 256)
    for mode, hidden, batch in itertools.product(MODES, hiddens, batches):
        if quick and mode in ("fp16", "tf32"):
            continue
        _, _, fp32_dot, precision, _ = MODES[mode]
        elem = 4 if MODES[mode][0] == "float32" else 2
        if hidden <= rnn_single.MAX_H:
            continue  # the launcher sends these to the single tier
        p = planner.plan_multi(hidden, batch, elem, fp32_dot and precision == "ieee", planner.GPU["sms"])
        # rows per group, grid and H are runtime values: one compile per set of constexprs (and H % 16)
        key = (mode, p.block_n, p.block_b, p.block_h, p.block_k, p.num_warps, p.w_on_chip, hidden % 16 == 0)
        if key not in seen:
            seen.add(key)
            found.append((mode, p, hidden, batch))
    return found


def _multi_variants(quick: bool):
    from fastrnn.kernels import rnn_multi

    for (mode, p, hidden, batch), persistent in itertools.product(multi_plans(quick), (True, False)):
        _, pointer, fp32_dot, precision, tanh = MODES[mode]
        common = dict(REVERSE=False, ACTIVATION=0, PACKED=True, PERSISTENT=persistent, W_ON_CHIP=p.w_on_chip,
                      FP32_DOT=fp32_dot, PRECISION=precision, CLOCK=0, BLOCK_B=p.block_b, BLOCK_N=p.block_n,
                      BLOCK_H=p.block_h, BLOCK_K=p.block_k)
        ints = dict(H=hidden, B=batch, rows_per_group=p.rows_per_group, T=1000, s_first=0, n_steps=1000,
                    spin_limit=10**9)
        yield rnn_multi._rnn_fwd_multi_kernel, mode, pointer, dict(common, TANH=tanh), ints, p.num_warps
        yield rnn_multi._rnn_bwd_multi_kernel, mode, pointer, common, ints, p.num_warps


def variants(quick: bool = False, only: str = ""):
    """(kernel, mode, pointer type, constexprs, runtime int values, num_warps) for every launch."""
    if only != "multi":
        yield from _single_variants(quick)
    if only != "single":
        yield from _multi_variants(quick)


_DEF = re.compile(r"^(%[\w.$-]+)(?::(\d+))?\s*=\s*(.*)$")
_VALUE = re.compile(r"%[\w.$-]+(?:#\d+)?")
# Ops whose result is data, not arithmetic on offsets: a loaded row offset is int64 in memory already, a
# program id or range is bounded by the launch, and neither says how the pointer it was loaded from was made.
_LEAVES = ("tt.load", "tt.atomic_rmw", "tt.atomic_cas", "arith.constant", "tt.make_range", "tt.get_program_id",
           "tt.get_num_programs")


def _strip_loc(line: str) -> str:
    at = line.rfind(" loc(")
    return line[:at] if at >= 0 and "{" not in line[at:] else line


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _result_type(text: str) -> str:
    kind = text.rsplit(" : ", 1)[-1]
    return kind.rsplit(" to ", 1)[-1].rsplit(" -> ", 1)[-1].strip()


def _is_i32(kind: str) -> bool:
    return re.search(r"(?:^|x)i32>?$", kind) is not None


class _Ssa:
    """The values of one kernel's TTIR text with MLIR's scoping (the printer reuses a name in sibling
    regions): ``nodes[id] = (op, result type, [(value name, scope of its use)])``."""

    def __init__(self, ttir: str):
        self.lines = [_strip_loc(line) for line in ttir.splitlines()]
        self.scopes: list[tuple] = []
        stack, fresh, owner = [0], 1, {(0,): ""}
        for index, line in enumerate(self.lines):
            text = line.strip()
            if text.startswith("}"):
                closed = tuple(stack)
                stack.pop()
            self.scopes.append(tuple(stack))
            if text.endswith("{"):
                stack.append(fresh)
                fresh += 1
                opener = _DEF.match(text)
                owner[tuple(stack)] = (owner.get(closed, "") if text.startswith("}")
                                       else (opener.group(3).split()[0], index) if opener else "")
        self.defs: dict[str, list[tuple[tuple, int]]] = {}
        self.nodes: list[tuple[str, str, list[tuple[str, tuple]]]] = []
        carried: dict[int, list] = {}  # scf.while line -> every value its regions use
        for index, line in enumerate(self.lines):
            text, scope = line.strip(), self.scopes[index]
            if text.startswith("^bb"):
                region_owner = owner.get(scope, "")
                sources = carried.get(region_owner[1], []) if region_owner and region_owner[0] == "scf.while" else []
                for name in re.findall(r"(%[\w.$-]+):", text):
                    self._define(name, scope, "block argument", "", sources)
                continue
            match = _DEF.match(text)
            if not match:
                continue
            name, count, rhs = match.groups()
            op = rhs.split("(", 1)[0].split()[0].strip('"')
            results = [f"{name}#{k}" for k in range(int(count))] + [name] if count else [name]
            if op not in ("scf.for", "scf.if", "scf.while"):
                operands = [(v, scope) for v in _VALUE.findall(rhs)]
                if op == "tt.make_range":
                    operands = [(rhs, ())]  # kept for its end: the range's bound
                for result in results:
                    self._define(result, scope, op, _result_type(rhs), operands)
                continue
            inner = self.scopes[index + 1]
            yields = self._region_yields(index)
            pairs = re.findall(r"(%[\w.$-]+) = (%[\w.$-]+(?:#\d+)?)", rhs.split("{", 1)[0].split(" -> ", 1)[0])
            if op == "scf.while":
                span = self._span(index)
                every = [(v, scope) for _, v in pairs] + [(v, self.scopes[k]) for k in span
                                                          for v in _VALUE.findall(self.lines[k])]
                carried[index] = every
                for result in results:
                    self._define(result, scope, op, "", every)
                for arg, _ in pairs:
                    self._define(arg, inner, op, "", every)
                continue
            if op == "scf.for":
                loop = re.match(r"scf\.for (%[\w.$-]+) = (\S+) to (\S+) step (\S+)", rhs)
                self._define(loop.group(1), inner, op, "", [(v, scope) for v in loop.groups()[1:]])
                pairs = pairs[1:]  # the first pair is the induction variable
            for k, result in enumerate(r for r in results if r != name or not count):
                sources = [(y[k], where) for y, where in yields if k < len(y)]
                if k < len(pairs):
                    sources.append((pairs[k][1], scope))
                    self._define(pairs[k][0], inner, op, "", sources)
                self._define(result, scope, op, "", sources)
                if count:
                    self._define(name, scope, op, "", sources)

    def _define(self, name: str, scope: tuple, op: str, kind: str, sources: list) -> None:
        self.defs.setdefault(name, []).append((scope, len(self.nodes)))
        self.nodes.append((op, kind, sources))

    def _span(self, start: int) -> range:
        own = _indent(self.lines[start])
        for k in range(start + 1, len(self.lines)):
            text = self.lines[k].strip()
            if _indent(self.lines[k]) == own and text.startswith("}") and not text.endswith("{"):
                return range(start + 1, k)
        return range(start + 1, len(self.lines))

    def _region_yields(self, start: int) -> list[tuple[list[str], tuple]]:
        """Operands of each ``scf.yield`` that ends a region of the op on line ``start`` (then / else)."""
        own = _indent(self.lines[start])
        return [(_VALUE.findall(self.lines[k].strip()), self.scopes[k]) for k in self._span(start)
                if _indent(self.lines[k]) == own + 2 and self.lines[k].strip().startswith("scf.yield")]

    def resolve(self, name: str, scope: tuple) -> int | None:
        """The node a use of ``name`` in ``scope`` means: its definition in the innermost enclosing region."""
        visible = [(len(where), node) for where, node in self.defs.get(name, ()) if scope[:len(where)] == where]
        return max(visible)[1] if visible else None


# An in-tile index (a tl.arange, no program id or loop index in it) times a stride stays 32-bit: it is below
# TILE_INDEX_LIMIT * H, and the launcher refuses H >= 2^31 / TILE_INDEX_LIMIT (launch.MAX_HIDDEN).
TILE_INDEX_LIMIT = 128
_SHAPE_OPS = ("tt.make_range", "tt.expand_dims", "tt.broadcast", "arith.constant", "tt.reshape", "tt.trans")


def _in_tile(ssa: _Ssa, node: Optional[int]) -> bool:
    """Whether a value is made only of ranges below TILE_INDEX_LIMIT and constants (reshaped)."""
    stack, seen = [node], set()
    while stack:
        node = stack.pop()
        if node is None:
            return False
        if node in seen:
            continue
        seen.add(node)
        op, _kind, sources = ssa.nodes[node]
        if op not in _SHAPE_OPS:
            return False
        if op == "tt.make_range":
            end = re.search(r"end = (\d+)", sources[0][0])
            if not end or int(end.group(1)) > TILE_INDEX_LIMIT:
                return False
        elif op != "arith.constant":
            stack.extend(ssa.resolve(name, where) for name, where in sources)
    return True


def offset_violations(ttir: str) -> list[str]:
    """Pointer offsets of a kernel's TTIR that are computed with a 32-bit multiply, shift or truncation.

    Walks back from the offset operand of every ``tt.addptr`` through the ops that compute it (across
    scf.for / scf.if / scf.while results and loop-carried values); a loaded value, a program id, a range or a
    kernel argument ends the walk (each is bounded by the launch or int32 arguments). Sums of such values may
    be 32-bit; products may not, except an in-tile index times a stride (``_in_tile``): an i32
    ``arith.muli`` (or ``shli``, or a ``trunci`` to i32) on the way is reported as
    ``"<kernel>: offset <value> <- <op> <value> (<type>)"``.
    """
    ssa = _Ssa(ttir)
    kernel = re.search(r"tt\.func (?:public )?@(\w+)", ttir)
    found = set()
    for index, line in enumerate(ssa.lines):
        match = re.search(r"tt\.addptr (%[\w.$-]+(?:#\d+)?), (%[\w.$-]+(?:#\d+)?)", line)
        if not match:
            continue
        offset = match.group(2)
        stack, seen = [ssa.resolve(offset, ssa.scopes[index])], set()
        while stack:
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            op, kind, sources = ssa.nodes[node]
            tile = op == "arith.muli" and any(_in_tile(ssa, ssa.resolve(name, where)) for name, where in sources)
            if op in ("arith.muli", "arith.shli", "arith.trunci") and _is_i32(kind) and not tile:
                value = next(name for name, defs in ssa.defs.items() if any(n == node for _, n in defs))
                found.add(f"{kernel.group(1) if kernel else '?'}: offset {offset} <- {op} {value} ({kind})")
            if op not in _LEAVES:
                stack.extend(ssa.resolve(name, where) for name, where in sources)
    return sorted(found)


def ttir_of(jit, sig: dict, consts: dict, attrs: dict, target, num_warps: int) -> str:
    """The kernel's TTIR as triton.compile makes it (front end and the TTIR passes: inlining, CSE,
    canonicalisation), without the GPU stages."""
    from triton._C.libtriton import ir
    from triton.compiler import ASTSource, make_backend

    src = ASTSource(jit, sig, consts, attrs)
    backend = make_backend(target)
    options = backend.parse_options({"num_warps": num_warps, **src.parse_options()})
    stages: dict = {}
    backend.add_stages(stages, options, src.language)
    context = ir.context()
    ir.load_dialects(context)
    backend.load_dialects(context)
    module = src.make_ir(target, options, backend.get_codegen_implementation(options), backend.get_module_map(),
                         context)
    return str(stages["ttir"](module, {"target": target}))


def ptxas_usage(ptx: str, arch: int) -> tuple[int, int] | None:
    """(registers per thread, spill bytes) from ``ptxas -v``, with whichever ptxas accepts this PTX."""
    import triton

    candidates = sorted(glob.glob(os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/ptxas*")))
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        for ptxas in candidates:
            done = subprocess.run([ptxas, "-v", f"-arch=sm_{arch}a", f.name, "-o", os.devnull],
                                  capture_output=True, text=True)
            if done.returncode == 0:
                regs = re.search(r"Used (\d+) registers", done.stderr)
                spills = re.findall(r"(\d+) bytes spill (?:stores|loads)", done.stderr)
                return (int(regs.group(1)) if regs else -1, sum(int(x) for x in spills))
    finally:
        os.unlink(f.name)
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--quick", action="store_true", help="fewer dtypes, flags and batch classes (CI)")
    parser.add_argument("--no-spills", action="store_true", help="fail if any variant spills")
    parser.add_argument("--ttgir", default=None, help="write each variant's TTGIR into this folder")
    parser.add_argument("--only", choices=("single", "multi"), default="", help="one tier's variants")
    parser.add_argument("--offsets", action="store_true",
                        help="only the 64-bit pointer offset check, on each distinct variant's TTIR (no ptxas)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("aot_check: unset TRITON_INTERPRET to compile", file=sys.stderr)
        return 2
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    print(f"aot_check: triton {triton.__version__} ({os.path.dirname(triton.__file__)}), sm_{args.arch}")
    target = GPUTarget("cuda", args.arch, 32)
    if args.offsets:
        return check_offsets(variants(args.quick, args.only), target)
    count, spilling, staged, narrow = 0, [], [], []
    for fn, mode, pointer, constexprs, ints, warps in variants(args.quick, args.only):
        jit = _jit(fn)
        sig, consts, attrs = specialise(jit, pointer, constexprs, ints)
        kernel = triton.compile(ASTSource(jit, sig, consts, attrs), target=target, options={"num_warps": warps})
        usage = ptxas_usage(kernel.asm["ptx"], args.arch)
        flags = ",".join(f"{k}={v}" for k, v in constexprs.items() if k not in ("ACTIVATION", "CLOCK"))
        name = f"{jit.__name__} {mode} {flags} warps={warps} H={ints.get('H')} B={ints.get('B')}"
        regs, spills = usage if usage else ("?", "?")
        print(f"ok {name} shared={kernel.metadata.shared} regs={regs} spill_bytes={spills}", flush=True)
        if args.ttgir:
            os.makedirs(args.ttgir, exist_ok=True)
            with open(os.path.join(args.ttgir, f"{count:04d}-{jit.__name__}.ttgir"), "w") as f:
                f.write(f"// {name}\n" + kernel.asm["ttgir"])
        if usage and usage[1] > 0:
            spilling.append(name)
        if constexprs.get("W_IN_REGS") and re.search(r"ttg\.local_(alloc|load)", kernel.asm["ttgir"]):
            staged.append(name)
        narrow += [f"{name}: {v}" for v in offset_violations(kernel.asm["ttir"])]
        count += 1
    print(f"compiled {count} kernel variants for sm_{args.arch} with triton {triton.__version__}; "
          f"variants that spill: {len(spilling)}; W_IN_REGS variants staging through shared memory: "
          f"{len(staged)}; pointer offsets with 32-bit products: {len(narrow)}")
    if staged:
        print("W_IN_REGS but shared memory:\n" + "\n".join(staged), file=sys.stderr)
    if narrow:
        print("32-bit offset arithmetic:\n" + "\n".join(narrow), file=sys.stderr)
    if args.no_spills and spilling:
        print("\n".join(spilling), file=sys.stderr)
    return 1 if staged or narrow or (args.no_spills and spilling) else 0


def check_offsets(found, target) -> int:
    """``offset_violations`` over the TTIR of each distinct (kernel, signature, constexprs) among ``found``,
    each also with PACKED and REVERSE flipped (the padded and packed rows are computed differently, and the
    spill check compiles the multi tier packed only); TTIR does not depend on num_warps. Prints a summary
    line; returns 1 if any offset has a 32-bit product."""
    seen, narrow, count = set(), [], 0
    for fn, _mode, pointer, constexprs, ints, warps in found:
        jit = _jit(fn)
        for packed, reverse in itertools.product((False, True), repeat=2):
            flipped = dict(constexprs, PACKED=packed, REVERSE=reverse)
            sig, consts, attrs = specialise(jit, pointer, flipped, ints)
            key = (jit.__name__, tuple(sig.items()), tuple(sorted(consts.items())), tuple(sorted(attrs)))
            count += 1
            if key in seen:
                continue
            seen.add(key)
            narrow += offset_violations(ttir_of(jit, sig, consts, attrs, target, warps))
    print(f"offsets: {len(seen)} distinct TTIRs of {count} variants; pointer offsets with 32-bit products: "
          f"{len(narrow)}")
    if narrow:
        print("\n".join(sorted(set(narrow))), file=sys.stderr)
    return 1 if narrow else 0


if __name__ == "__main__":
    sys.exit(main())
