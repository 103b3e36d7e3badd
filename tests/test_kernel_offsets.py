"""Large-tensor safety of the Triton kernels: no pointer offset is computed with a 32-bit product.

``row * H`` or ``t * B * H`` pass 2^31 once a tensor has that many elements (float32 [T, B, H] of 8 GiB); a
wrapped offset is an illegal address on the GPU, which kills the process's CUDA context. The check reads
each kernel variant's TTIR (``fastrnn.kernels.aot_check.offset_violations``): every ``tt.addptr`` offset is
walked back to its sources, and an i32 multiply on the way fails. Compiling needs Triton without
TRITON_INTERPRET (conftest sets it on machines without a GPU), so those checks run in a subprocess; the
analysis itself is tested here on hand-written TTIR that follows the printer's form.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fastrnn.backends import _BACKENDS

aot_check = pytest.importorskip("fastrnn.kernels.aot_check")
REASON = _BACKENDS["triton"].unavailable_reason()
needs_triton = pytest.mark.skipif(REASON is not None and "Triton is not importable" in str(REASON),
                                  reason=str(REASON))
ROOT = Path(__file__).resolve().parents[1]

HEADER = """module {
  tt.func public @k(%p: !tt.ptr<f32> {tt.divisibility = 16 : i32} loc("p"(#loc)), %H: i32 loc("H"(#loc)), \
%T: i32 loc("T"(#loc))) attributes {noinline = false} {
    %c0_i32 = arith.constant 0 : i32 loc(#loc1)
    %c1_i32 = arith.constant 1 : i32 loc(#loc1)
    %i = tt.get_program_id x : i32 loc(#loc2)
"""
FOOTER = """    tt.return loc(#loc)
  } loc(#loc)
} loc(#loc)
"""


def _violations(body: str) -> list[str]:
    return aot_check.offset_violations(HEADER + textwrap.indent(textwrap.dedent(body), "    ") + FOOTER)


def test_a_32_bit_product_in_an_offset_is_found():
    found = _violations("""
        %o = arith.muli %i, %H : i32 loc(#loc3)
        %q = tt.addptr %p, %o : !tt.ptr<f32>, i32 loc(#loc4)
        %x = tt.load %q : !tt.ptr<f32> loc(#loc5)
    """)
    assert found == ["k: offset %o <- arith.muli %o (i32)"]


def test_a_64_bit_product_and_a_32_bit_sum_pass():
    assert _violations("""
        %a = arith.extsi %i : i32 to i64 loc(#loc3)
        %b = arith.extsi %H : i32 to i64 loc(#loc3)
        %o = arith.muli %a, %b : i64 loc(#loc3)
        %q = tt.addptr %p, %o : !tt.ptr<f32>, i64 loc(#loc4)
        %s = arith.addi %i, %T : i32 loc(#loc3)
        %r = tt.addptr %q, %s : !tt.ptr<f32>, i32 loc(#loc4)
    """) == []


def test_a_product_that_feeds_only_a_mask_or_a_loaded_value_is_not_an_offset():
    assert _violations("""
        %n = arith.muli %i, %H : i32 loc(#loc3)
        %m = arith.cmpi slt, %i, %n : i32 loc(#loc3)
        %q = tt.addptr %p, %i : !tt.ptr<f32>, i32 loc(#loc4)
        %x = tt.load %q, %m : !tt.ptr<f32> loc(#loc5)
        %y = arith.fptosi %x : f32 to i32 loc(#loc3)
        %r = tt.addptr %p, %y : !tt.ptr<f32>, i32 loc(#loc4)
    """) == []


def test_a_truncation_and_a_shift_are_found():
    found = _violations("""
        %a = arith.extsi %i : i32 to i64 loc(#loc3)
        %t = arith.trunci %a : i64 to i32 loc(#loc3)
        %q = tt.addptr %p, %t : !tt.ptr<f32>, i32 loc(#loc4)
        %s = arith.shli %i, %c1_i32 : i32 loc(#loc3)
        %r = tt.addptr %p, %s : !tt.ptr<f32>, i32 loc(#loc4)
    """)
    assert found == ["k: offset %s <- arith.shli %s (i32)", "k: offset %t <- arith.trunci %t (i32)"]


def test_a_product_carried_through_a_loop_is_found():
    """The offset is a loop-carried value whose product is made in the previous iteration (the yield)."""
    found = _violations("""
        %r = scf.for %s = %c0_i32 to %T step %c1_i32 iter_args(%acc = %c0_i32) -> (i32)  : i32 {
          %q = tt.addptr %p, %acc : !tt.ptr<f32>, i32 loc(#loc4)
          %n = arith.muli %s, %H : i32 loc(#loc3)
          scf.yield %n : i32 loc(#loc6)
        } loc(#loc7)
    """)
    assert found == ["k: offset %acc <- arith.muli %n (i32)"]
    found = _violations("""
        %r:2 = scf.for %s = %c0_i32 to %T step %c1_i32 iter_args(%a = %c0_i32, %b = %c0_i32) -> (i32, i32)  : i32 {
          %n = arith.muli %s, %H : i32 loc(#loc3)
          scf.yield %s, %n : i32, i32 loc(#loc6)
        } loc(#loc7)
        %q = tt.addptr %p, %r#0 : !tt.ptr<f32>, i32 loc(#loc4)
    """)
    assert found == []  # result 0 is the induction variable; only result 1 carries the product


def test_a_name_reused_in_a_sibling_region_is_another_value():
    """The printer names values per region: the %5 used by the offset is the sum, not the other region's
    product (and a use in a nested region sees the enclosing definition)."""
    body = """
        %c = arith.cmpi slt, %i, %T : i32 loc(#loc3)
        scf.if %c {
          %5 = arith.muli %i, %H : i32 loc(#loc3)
          tt.store %p, %cst, %c : !tt.ptr<f32> loc(#loc8)
        } loc(#loc7)
        %5 = arith.addi %i, %T : i32 loc(#loc3)
        scf.if %c {
          %q = tt.addptr %p, %5 : !tt.ptr<f32>, i32 loc(#loc4)
        } loc(#loc7)
    """
    assert _violations(body) == []
    assert _violations(body.replace("arith.addi %i, %T", "arith.muli %i, %T")) == [
        "k: offset %5 <- arith.muli %5 (i32)"]


def test_an_in_tile_index_times_a_stride_may_stay_32_bit():
    """``tl.arange(0, BLOCK) * H`` is below BLOCK * H (the launcher bounds H); a program id in it is not."""
    body = """
        %r = tt.make_range {end = 16 : i32, start = 0 : i32} : tensor<16xi32> loc(#loc3)
        %e = tt.expand_dims %r {axis = 1 : i32} : tensor<16xi32> -> tensor<16x1xi32> loc(#loc3)
        %h = tt.splat %H : i32 -> tensor<16x1xi32> loc(#loc3)
        %o = arith.muli %e, %h : tensor<16x1xi32> loc(#loc3)
        %s = tt.splat %p : !tt.ptr<f32> -> tensor<16x1x!tt.ptr<f32>> loc(#loc3)
        %q = tt.addptr %s, %o : tensor<16x1x!tt.ptr<f32>>, tensor<16x1xi32> loc(#loc4)
    """
    assert _violations(body) == []
    assert _violations(body.replace("end = 16", "end = 256")) == [
        "k: offset %o <- arith.muli %o (tensor<16x1xi32>)"]  # past TILE_INDEX_LIMIT
    with_program_id = body.replace("%e = tt.expand_dims %r", "%i16 = tt.splat %i : i32 -> tensor<16xi32> loc(#loc3)\n"
                                   "        %a = arith.addi %r, %i16 : tensor<16xi32> loc(#loc3)\n"
                                   "        %e = tt.expand_dims %a")
    assert _violations(with_program_id) == ["k: offset %o <- arith.muli %o (tensor<16x1xi32>)"]


def test_the_launcher_refuses_hidden_sizes_whose_in_tile_offsets_would_pass_2_31():
    torch = pytest.importorskip("torch")
    launch = pytest.importorskip("fastrnn.kernels.launch")
    assert launch.MAX_HIDDEN * aot_check.TILE_INDEX_LIMIT <= 2**31
    with pytest.raises(ValueError, match="hidden sizes below"):
        launch._geometry(torch.empty(1, 1, launch.MAX_HIDDEN, device="meta"), None)
    assert launch._geometry(torch.empty(2, 1, launch.MAX_HIDDEN - 1, device="meta"), None)[2] == launch.MAX_HIDDEN - 1


def _run(args, **kwargs):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=900, cwd=ROOT,
                          **kwargs)


TINY = '''
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget

from fastrnn.kernels import aot_check


@triton.jit
def narrow(p_x, p_y, H, BLOCK: tl.constexpr):
    i_b = tl.program_id(0)
    o = tl.arange(0, BLOCK)
    tl.store(p_y + i_b * H + o, tl.load(p_x + i_b * H + o))


@triton.jit
def wide(p_x, p_y, H, BLOCK: tl.constexpr):
    i_b = tl.program_id(0).to(tl.int64)
    o = tl.arange(0, BLOCK)
    tl.store(p_y + i_b * H + o, tl.load(p_x + i_b * H + o))


for fn in (narrow, wide):
    sig = {"p_x": "*fp32", "p_y": "*fp32", "H": "i32", "BLOCK": "constexpr"}
    ttir = aot_check.ttir_of(fn, sig, {"BLOCK": 16}, {}, GPUTarget("cuda", 90, 32), 4)
    print(fn.__name__, len(aot_check.offset_violations(ttir)))
'''


@needs_triton
def test_the_check_reads_triton_s_own_ttir(tmp_path):
    """Two real kernels, one with ``program_id * H`` in 32 bits and one cast to int64 first."""
    script = tmp_path / "tiny_kernels.py"
    script.write_text(TINY)
    done = _run([str(script)])
    assert done.returncode == 0, done.stderr[-3000:]
    counts = dict(line.split() for line in done.stdout.splitlines() if line.startswith(("narrow", "wide")))
    assert int(counts["narrow"]) >= 1 and int(counts["wide"]) == 0, done.stdout


@needs_triton
def test_every_kernel_variant_computes_offsets_in_64_bits():
    """The CI set of variants (``--quick``: every kernel, both tiers, both hold paths of each, padded and
    packed, forward and reverse); ``python -m fastrnn.kernels.aot_check --offsets`` checks all 2500-odd."""
    done = _run(["-m", "fastrnn.kernels.aot_check", "--offsets", "--quick"])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    summary = [line for line in done.stdout.splitlines() if line.startswith("offsets:")]
    assert summary and summary[0].endswith("pointer offsets with 32-bit products: 0"), done.stdout
    distinct = int(summary[0].split()[1])
    assert distinct >= 100, summary  # the variants were really compiled, not skipped
