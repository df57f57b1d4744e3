"""The core is pure: importing and running it loads no broker, store, database, schema or YAML library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FORBIDDEN = ("faust", "aiokafka", "redis", "clickhouse_connect", "chdb", "pydantic", "yaml", "mode")


def test_engine_core_imports_no_io_library() -> None:
    code = (
        "import sys, engine.core, engine.core.kinds.absence, engine.core.kinds.threshold, "
        "engine.core.kinds.sequence, engine.core.kinds.score\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}]\n"
        "print(','.join(sorted(bad)))"
    )
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
