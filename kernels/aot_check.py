"""Compiles every Triton kernel variant for a GPU architecture without needing that GPU.

    python -m fastrnn.kernels.aot_check [--arch 90]

The interpreter forgives what the GPU compiler does not (power-of-two aranges, tl.dot shapes and dtypes,
types in loops), so CI compiles each variant through to a cubin for sm_90 (H100/H200) and prints the
registers, spills and shared memory each uses. Must run without TRITON_INTERPRET=1.
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

DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def _signature(fn, pointer_type: str, constexprs: dict) -> dict:
    sig = {}
    for name in inspect.signature(fn.fn if hasattr(fn, "fn") else fn).parameters:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in ("p_batch_sizes", "p_counter"):
            sig[name] = "*i32"
        elif name == "p_offsets":
            sig[name] = "*i64"
        elif name in ("p_state",):
            sig[name] = "*fp32"
        elif name.startswith("p_"):
            sig[name] = pointer_type
        else:
            sig[name] = "i32"
    return sig


def variants(quick: bool = False):
    """(kernel, dtype, constexprs, num_warps) for every launch the launcher can make."""
    from fastrnn.kernels import launch, rnn_multi, rnn_single

    flags = [(True, False)] if quick else list(itertools.product((False, True), (False, True)))
    for dtype, config, block_h, (packed, reverse) in itertools.product(
        DTYPES, rnn_single._configs(), (16, 32, 64, 128), flags
    ):
        if dtype == "float32" and block_h > rnn_single.MAX_H_FP32_IEEE:
            continue  # the launcher sends these to the multi-program tier
        common = dict(REVERSE=reverse, ACTIVATION=0, PACKED=packed, FP32_DOT=dtype == "float32",
                      PRECISION="ieee", BLOCK_H=block_h, **config.kwargs)
        yield rnn_single._rnn_fwd_single_kernel.fn, dtype, common, config.num_warps
        yield rnn_single._rnn_bwd_single_kernel.fn, dtype, dict(common, ACTIVATION=1), config.num_warps
    for dtype, block_b, persistent in itertools.product(DTYPES, (16, 32, 64), (False, True)):
        common = dict(REVERSE=False, ACTIVATION=0, PACKED=True, PERSISTENT=persistent, FP32_DOT=dtype == "float32",
                      PRECISION="ieee", BLOCK_B=block_b, BLOCK_N=launch.MULTI_BLOCK_N, BLOCK_K=launch.MULTI_BLOCK_K)
        yield rnn_multi._rnn_fwd_multi_kernel, dtype, common, 4
        for phase in ((2,) if persistent else (0, 1)):
            yield rnn_multi._rnn_bwd_multi_kernel, dtype, dict(common, PHASE=phase), 4


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
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--quick", action="store_true", help="one packed/reverse combination per block shape")
    parser.add_argument("--no-spills", action="store_true",
                        help="fail if every autotune config of some single-tier kernel variant spills")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("aot_check: unset TRITON_INTERPRET to compile", file=sys.stderr)
        return 2
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", args.arch, 32)
    count, best_spill = 0, {}
    for fn, dtype, constexprs, warps in variants(args.quick):
        sig = _signature(fn, "*" + DTYPES[dtype], constexprs)
        kernel = triton.compile(ASTSource(fn, sig, constexprs), target=target, options={"num_warps": warps})
        usage = ptxas_usage(kernel.asm["ptx"], args.arch)
        flags = ",".join(f"{k}={v}" for k, v in constexprs.items())
        regs, spills = usage if usage else ("?", "?")
        print(f"ok {fn.__name__} {dtype} {flags} warps={warps} shared={kernel.metadata.shared} "
              f"regs={regs} spill_bytes={spills}")
        if usage and "single" in fn.__name__:
            shape = {k: v for k, v in constexprs.items() if k != "BLOCK_B"}
            key = f"{fn.__name__} {dtype} " + ",".join(f"{k}={v}" for k, v in shape.items())
            best_spill[key] = min(best_spill.get(key, usage[1]), usage[1])
        count += 1
    spilling = sorted(key for key, spill in best_spill.items() if spill > 0)
    print(f"compiled {count} kernel variants for sm_{args.arch}; single-tier variants with no spill-free "
          f"autotune config: {len(spilling)}")
    if args.no_spills and spilling:
        print("\n".join(spilling), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
