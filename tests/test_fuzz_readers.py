"""A bounded atheris (libFuzzer) run of each reader of untrusted files (tests/fuzz/fuzz_readers.py):
the manifest of a build folder, a clip, a model file. Any exception other than a
DynexportError is a crash; the test fails with the reader's traceback. DYNEXPORT_FUZZ_SECONDS
sets the time per reader (default 15, at most 20 here)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris", reason="atheris (requirements.txt) is not installed: the fuzz run is NOT run")

FUZZER = Path(__file__).resolve().parent / "fuzz" / "fuzz_readers.py"
SECONDS = min(int(os.environ.get("DYNEXPORT_FUZZ_SECONDS", "15")), 20)


@pytest.mark.parametrize("reader", ["manifest", "clip", "model"])
def test_reader_raises_only_dynexport_errors_under_fuzzing(reader, tmp_path):
    crashes = tmp_path / "crashes"
    crashes.mkdir()
    command = [sys.executable, str(FUZZER), reader, str(tmp_path / "work"), f"-max_total_time={SECONDS}",
               "-timeout=10", "-rss_limit_mb=4096", f"-artifact_prefix={crashes}/"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=SECONDS + 120)
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Uncaught Python exception" not in output, output[-6000:]
    assert not any(crashes.iterdir()), f"crash inputs written: {list(crashes.iterdir())}"
    runs = int(re.search(r"Done (\d+) runs", output).group(1))
    print(f"fuzz {reader}: {runs} runs in {SECONDS} s")
    assert runs > 100, f"only {runs} runs in {SECONDS} s: the reader is too slow to fuzz"
