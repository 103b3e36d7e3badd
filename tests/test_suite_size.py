"""A floor on the number of collected test ids (one-skeleton.md §6, "Coverage: >= 2,002 collected ids"): merging the
RNN and GRU/LSTM twins into spec-parametrized files (step 7) must not lose tests. The floor is the count after that
merge (3,219 before it). Collection alone takes ~5-10 s."""

import re
import subprocess
import sys
from pathlib import Path

FLOOR = 3469
ROOT = Path(__file__).resolve().parent.parent


def test_at_least_the_floor_of_test_ids_is_collected():
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    ids = [line for line in done.stdout.splitlines() if re.match(r"tests/\S+\.py::", line)]
    assert done.returncode == 0, f"collection failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert len(ids) >= FLOOR, f"only {len(ids)} test ids are collected; the floor is {FLOOR}"
