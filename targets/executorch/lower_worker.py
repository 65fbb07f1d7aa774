"""Worker process of the parallel ExecuTorch emitter (see ``LoweringWorkers``): imports torch
and ExecuTorch at once, then reads one line ``REQUEST.pkl<TAB>RESULT.pte`` from stdin, lowers
the pickled segment group the emitter wrote and writes the .pte. An empty line: exit."""

import pickle
import sys
from pathlib import Path

import torch

from targets.executorch.emitter import lower_segments


def main() -> None:
    torch.set_num_threads(1)
    line = sys.stdin.readline().strip()
    if not line:
        return
    request, result = map(Path, line.split("\t"))
    with open(request, "rb") as f:
        segments = pickle.load(f)
    result.write_bytes(lower_segments(segments))


if __name__ == "__main__":
    main()
