"""Worker process of the parallel ExecuTorch emitter: ``python -m targets.executorch.lower_worker
REQUEST.pkl RESULT.pte`` lowers the pickled segment group the emitter wrote and writes the .pte."""

import pickle
import sys
from pathlib import Path


def main() -> None:
    request, result = map(Path, sys.argv[1:3])
    with open(request, "rb") as f:
        segments = pickle.load(f)
    from targets.executorch.emitter import lower_segments

    result.write_bytes(lower_segments(segments))


if __name__ == "__main__":
    main()
