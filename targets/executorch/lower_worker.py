"""Worker process of the parallel ExecuTorch emitter (see ``LoweringWorkers``): imports torch
and ExecuTorch at once and builds XNNPACK's pattern graphs, then reads one line
``REQUEST.pkl<TAB>RESULT.pte`` from stdin, lowers the pickled segment group the emitter wrote
and writes the .pte. An empty line: exit. Its stdout carries only progress (a ``tick`` line
per lowering step): whatever else writes to stdout goes to stderr, the log."""

import os
import pickle
import sys
from pathlib import Path

import torch

from targets.executorch.emitter import build_xnnpack_patterns, lower_segments


def main() -> None:
    ticks = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # torch's or a native library's prints would read as progress
    sys.stdout = sys.stderr
    torch.set_num_threads(1)
    build_xnnpack_patterns()  # while the compiler still builds the segments
    line = sys.stdin.readline().strip()
    if not line:
        return
    request, result = map(Path, line.split("\t"))
    with open(request, "rb") as f:
        segments = pickle.load(f)
    def tick() -> None:
        ticks.write("tick\n")
        ticks.flush()

    result.write_bytes(lower_segments(segments, tick=tick))


if __name__ == "__main__":
    main()
