"""Coverage-guided fuzzing (atheris / libFuzzer) of the readers of untrusted files: a build
folder's manifest (``open_build``), a clip (``load_clip``) and a model file (``load_model``,
``.pt`` and ``.pt2``). A reader may refuse any input, but only with a ``DynexportError``:
any other exception is reported by atheris as a crash (and the input saved).

    python tests/fuzz/fuzz_readers.py manifest|clip|model WORKDIR [libFuzzer options]

WORKDIR gets the fixtures (a small build folder written without compiling, model files) and
the seed corpus made from them; the corpus grows in WORKDIR/corpus.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sys
import zlib
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["dynexport"]):
    import dynexport.harness.manifest_schema  # noqa: F401  (imported lazily by the readers)
    import dynexport.pickle_globals  # noqa: F401
    from dynexport.errors import DynexportError
    from dynexport.harness.clips import load_clip
    from dynexport.harness.verify import open_build
    from dynexport.loading import load_model

SHAPE = [1, 3, 8, 8]


def _build_folder(folder: Path) -> bytes:
    """A build folder whose plan, artifact and reference are real files (the artifact is not a
    runnable program: open_build never runs it); returns its manifest's bytes."""
    from dynexport.plan.frame_program import Artifact, FrameProgram, Role

    folder.mkdir(parents=True)
    program = FrameProgram()
    program.inputs = [program.add_tensor("input", (1, 8, 8, 3), Role.INPUT)]
    program.outputs = [program.add_tensor("output", (1, 8, 8, 3), Role.OUTPUT)]
    artifact = b"not a real program"
    program.artifacts = [Artifact("executorch", len(artifact), zlib.crc32(artifact))]
    files = {"plan.dxfp": program.to_bytes(), "model.pte": artifact, "reference/model.pt": b"PK\x05\x06" + bytes(18)}
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    manifest = {
        "format": "dynexport-build/1", "target": "host", "backends": ["executorch"],
        "input": {"shape": SHAPE, "normalization": {"scale": 1 / 255, "offset": 0.0}},
        "output": {"shape": SHAPE}, "state_bytes": 0, "plan": {"file": "plan.dxfp"}, "layers": [],
        "artifacts": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        "reference": {"file": "reference/model.pt"},
    }
    return json.dumps(manifest, indent=2).encode()


def _model_seeds() -> list[bytes]:
    import numpy as np  # noqa: F401
    import torch

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1)).eval()
    saved = io.BytesIO()
    torch.save(model, saved)
    exported = io.BytesIO()
    torch.export.save(torch.export.export(model, (torch.randn(*SHAPE),)), exported)
    return [saved.getvalue(), exported.getvalue()]


def _clip_seeds() -> list[bytes]:
    import numpy as np

    seeds = []
    for array in (np.zeros((2, *SHAPE[1:]), np.uint8), np.ones((3, *SHAPE[1:]), np.float32)):
        buffer = io.BytesIO()
        np.save(buffer, array)
        seeds.append(buffer.getvalue())
    return seeds


def main() -> None:
    target, workdir, options = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    if workdir.exists():
        shutil.rmtree(workdir)
    seeds, corpus, scratch = workdir / "seeds", workdir / "corpus", workdir / "scratch"
    for folder in (seeds, corpus, scratch):
        folder.mkdir(parents=True)
    build = workdir / "build"
    manifest_seed = _build_folder(build)
    manifest = json.loads(manifest_seed)
    seed_data = {"manifest": [manifest_seed, b"{}", b"[]"], "clip": _clip_seeds(), "model": _model_seeds()}[target]
    for index, data in enumerate(seed_data):
        (seeds / f"seed{index}").write_bytes(data)

    def one_manifest(data: bytes) -> None:
        (build / "manifest.json").write_bytes(data)
        try:
            open_build(build)
        except DynexportError:
            pass

    def one_clip(data: bytes) -> None:
        path = scratch / "clip.npy"
        path.write_bytes(data)
        try:
            load_clip(path, manifest)
        except DynexportError:
            pass

    def one_model(data: bytes) -> None:
        # the same bytes as a .pt and as a .pt2: the two loading routes
        for name in ("model.pt", "model.pt2"):
            path = scratch / name
            path.write_bytes(data)
            try:
                load_model(path)
            except DynexportError:
                pass

    run = {"manifest": one_manifest, "clip": one_clip, "model": one_model}[target]
    atheris.Setup([sys.argv[0], *options, str(corpus), str(seeds)], run)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
