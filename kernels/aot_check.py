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
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("aot_check: unset TRITON_INTERPRET to compile", file=sys.stderr)
        return 2
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    print(f"aot_check: triton {triton.__version__} ({os.path.dirname(triton.__file__)}), sm_{args.arch}")
    target = GPUTarget("cuda", args.arch, 32)
    count, spilling, staged = 0, [], []
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
        count += 1
    print(f"compiled {count} kernel variants for sm_{args.arch} with triton {triton.__version__}; "
          f"variants that spill: {len(spilling)}; W_IN_REGS variants staging through shared memory: "
          f"{len(staged)}")
    if staged:
        print("W_IN_REGS but shared memory:\n" + "\n".join(staged), file=sys.stderr)
    if args.no_spills and spilling:
        print("\n".join(spilling), file=sys.stderr)
    return 1 if staged or (args.no_spills and spilling) else 0


if __name__ == "__main__":
    sys.exit(main())
