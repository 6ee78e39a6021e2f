"""`exit_without_teardown`: a finished multi-process run leaves with its logs flushed and its exit code."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_exit_flushes_logs_and_skips_the_teardown(tmp_path):
    log = tmp_path / "run.log"
    script = textwrap.dedent(f"""
        import atexit, logging, sys
        from wlarl.utils.distributed import exit_without_teardown
        logging.basicConfig(filename={str(log)!r}, level=logging.INFO)
        atexit.register(lambda: print("teardown ran"))
        logging.getLogger("wlarl").info("done: final policy saved")
        print("buffered stdout", end="")
        sys.stderr.write("buffered stderr")
        exit_without_teardown(3)
        print("not reached")
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3
    assert proc.stdout == "buffered stdout" and proc.stderr == "buffered stderr"
    assert "done: final policy saved" in log.read_text()
