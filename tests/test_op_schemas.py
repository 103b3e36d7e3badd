"""Every ``fastrnn::`` operator schema, as registered after ``import fastrnn`` with the C++ library loaded, equals
the snapshot in ``tests/fixtures/op_schemas.txt`` (one-skeleton.md §6: saved programs record op names, argument
names, order, types, defaults and arity; a change to any of them can break a program saved earlier).

Regenerate the snapshot only for an intentional change, after ``tests/test_saved_programs.py`` still passes
(programs saved from 75e6fde load and run): ``.venv/bin/python tests/test_op_schemas.py``.
"""

import difflib
import sys
from pathlib import Path

import torch

SNAPSHOT = Path(__file__).resolve().parent / "fixtures" / "op_schemas.txt"
REGENERATE = "python tests/test_op_schemas.py"


def registered_schemas() -> list[str]:
    """``str(schema)`` of every overload of every ``fastrnn::`` op, sorted."""
    import fastrnn  # noqa: F401  (registers the custom ops and loads a built fastrnn._C)
    from fastrnn._cpp import load_cpp_ops

    missing = load_cpp_ops()
    assert missing is None, f"the C++ ops did not load: {missing}"
    names = [name for name in torch._C._dispatch_get_all_op_names() if name.startswith("fastrnn::")]
    return sorted(str(schema) for name in names for schema in torch._C._jit_get_schemas_for_operator(name))


def test_every_fastrnn_op_schema_matches_the_snapshot():
    want = SNAPSHOT.read_text().splitlines()
    got = registered_schemas()
    if got != want:
        diff = "\n".join(difflib.unified_diff(want, got, "op_schemas.txt (snapshot)", "registered now", lineterm=""))
        raise AssertionError(
            "the fastrnn:: operator schemas changed (a renamed or removed op, or a changed argument name, order, "
            "type, default or arity breaks programs saved earlier):\n"
            f"{diff}\n"
            "If the change is intentional and tests/test_saved_programs.py still passes, regenerate the snapshot "
            f"with `{REGENERATE}`."
        )


def test_snapshot_lists_the_ops_saved_programs_name():
    names = {line.split("(", 1)[0] for line in SNAPSHOT.read_text().splitlines()}
    for op in ("recurrence", "recurrence_backward", "recurrence_double_backward", "rnn_cell", "gru_recurrence",
               "gru_recurrence_backward", "lstm_recurrence", "lstm_recurrence_backward", "rnn_fwd", "rnn_bwd",
               "mm_nn", "_release_step_buffers", "_cached_step_buffer_bytes"):
        assert f"fastrnn::{op}" in names


if __name__ == "__main__":
    lines = registered_schemas()
    SNAPSHOT.write_text("".join(f"{line}\n" for line in lines))
    print(f"wrote {len(lines)} schemas to {SNAPSHOT}", file=sys.stderr)
