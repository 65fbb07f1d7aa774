"""Conversion time and package size of a model's Core ML package, without a build folder:

    python -m targets.coreml.measure examples/skipconv_heatmap/model.pt [--precision fp16]

Prints one JSON object: segments, seconds in ``emit_coreml`` (export + conversion + merge),
package bytes per file and in all, and the op counts over every function.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main(argv=None) -> None:
    from dynexport.compiler.pipeline import compile_model
    from dynexport.loading import load_model
    from targets.coreml.emitter import emit_coreml
    from targets.coreml.structure import check_package, op_counts

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16"))
    args = parser.parse_args(argv)
    model = load_model(args.model)
    compiled = compile_model(model, tuple(model.dynexport_input_shape))
    start = time.perf_counter()
    files = emit_coreml(compiled.segments, precision=args.precision)
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "model.mlpackage"
        for relative, data in files.items():
            (package / relative).parent.mkdir(parents=True, exist_ok=True)
            (package / relative).write_bytes(data)
        problems = check_package(package, compiled.program, {"precision": args.precision})
        ops = op_counts(package)
    print(json.dumps({"segments": len(compiled.segments), "seconds": round(seconds, 2),
                      "bytes": sum(map(len, files.values())), "files": {k: len(v) for k, v in files.items()},
                      "structural_problems": problems, "ops": ops}))


if __name__ == "__main__":
    main()
