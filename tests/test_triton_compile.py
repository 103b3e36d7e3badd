"""The GPU's rules, checked without a GPU: every Triton kernel variant compiles to an sm_90 cubin
(power-of-two aranges, tl.dot shapes, loop types), and every single-tier variant has an autotune
config that ptxas allocates without spilling."""

import os
import subprocess
import sys

import pytest

from fastrnn.backends import _BACKENDS

REASON = _BACKENDS["triton"].unavailable_reason()


@pytest.mark.skipif(REASON is not None and "Triton is not importable" in str(REASON), reason=str(REASON))
def test_every_kernel_compiles_for_sm90_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "fastrnn.kernels.aot_check", "--quick", "--no-spills"],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "compiled" in done.stdout and "sm_90" in done.stdout
