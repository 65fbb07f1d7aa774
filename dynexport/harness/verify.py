"""``dynexport verify``: stream a clip through the PyTorch reference and through each backend
artifact via the native runtime (on the host, under qemu-arm64 or on an Android device) and
compare frame by frame.

Tolerances (one place; the README and ``--help`` quote them):
- outputs: max |runtime - reference| / (range of the reference output over the clip)
  <= ``RELATIVE_TOLERANCE`` on every frame;
- drift: the last frame's relative error over the first's is ``drift_ratio``; it fails
  only above ``DRIFT_LIMIT`` *and* when the last frame's error exceeds ``DRIFT_FLOOR``
  (a ratio of two rounding errors means nothing);
- gates: every block (patch) decision and every D-STEP channel decision equal to the
  reference's. A block whose score sits within the runtime's tie band of its threshold
  (``DYNRT_TIE_EPSILON`` in dynrt.h) takes the reference's decision in verification runs,
  so a rounding difference never cascades; such ties are counted, not failed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from dynexport.errors import DynexportError, PlanError
from dynexport.harness.clips import VerifyClip
from dynexport.harness.reference import StreamRun, layer_sizes, run_reference
from dynexport.plan.frame_program import FrameProgram
from targets import BACKENDS

RELATIVE_TOLERANCE = 1e-4
DRIFT_LIMIT = 10.0
DRIFT_FLOOR = 1e-5


@dataclasses.dataclass
class Build:
    folder: Path
    manifest: dict
    program: FrameProgram

    def artifact(self, backend: str) -> Path:
        return self.folder / BACKENDS[backend].artifact


MANIFEST_LIMIT = 64 << 20  # bytes: a manifest is a few KiB; more is no manifest


def open_build(folder) -> Build:
    """Read OUT's manifest and plan. Nothing in the folder is trusted: the manifest is checked
    against its schema (``manifest_schema``), every file it names must be a regular file inside
    the folder and match its SHA-256, the plan, every backend artifact and the reference must be
    among those files, each artifact must be the one the plan was built with (size, CRC-32),
    and the manifest must agree with the plan. Raises ``PlanError``."""
    import stat
    import zlib

    from dynexport.harness.manifest_schema import check_against_plan, member_path, validate_manifest
    from dynexport.plan.frame_program import PlanFormatError

    folder = Path(folder)
    manifest_path = folder / "manifest.json"
    try:
        manifest_stat = manifest_path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise PlanError(f"'{folder}' is not a dynexport build folder (no manifest.json); make one with dynexport build") from None
    except OSError as exc:
        raise PlanError(f"'{manifest_path}' cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(manifest_stat.st_mode) or manifest_stat.st_size > MANIFEST_LIMIT:
        raise PlanError(f"'{manifest_path}' is not a manifest (not a regular file of at most "
                        f"{MANIFEST_LIMIT >> 20} MiB)")
    where = str(manifest_path)
    try:
        manifest = json.loads(member_path(folder, "manifest.json", "the manifest").read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PlanError(f"'{manifest_path}': not valid JSON ({exc})") from None
    except OSError as exc:
        raise PlanError(f"'{manifest_path}' cannot be read: {exc.strerror}") from None
    except RecursionError:
        raise PlanError(f"'{manifest_path}': nested too deeply to be a manifest") from None
    validate_manifest(manifest, where, BACKENDS)
    contents: dict[str, bytes] = {}
    for name, digest in manifest["artifacts"].items():
        path = member_path(folder, name, "listed in the manifest")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise PlanError(f"'{folder / name}' cannot be read: {exc.strerror}") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise PlanError(f"'{folder / name}' does not match the manifest's checksum: it changed after the build")
        contents[name] = data
    needed = {manifest["plan"]["file"]: "the plan", **{BACKENDS[b].artifact: f"the {b} artifact" for b in manifest["backends"]}}
    if "reference" in manifest:
        needed[manifest["reference"]["file"]] = "the reference model"
    for name, what in needed.items():
        if name not in contents:
            raise PlanError(f"'{where}': {what} '{name}' is not among the checksummed artifacts: refused")
    try:
        program = FrameProgram.from_bytes(contents[manifest["plan"]["file"]])
    except PlanFormatError as exc:
        raise PlanError(f"'{folder / manifest['plan']['file']}': {exc}") from None
    for backend in manifest["backends"]:
        data = contents[BACKENDS[backend].artifact]
        recorded = [a for a in program.artifacts if a.name == backend]
        if recorded and all((a.size, a.crc32) != (len(data), zlib.crc32(data)) for a in recorded):
            raise PlanError(f"'{folder / BACKENDS[backend].artifact}' is not the {backend} artifact the plan was built "
                            f"with (size or CRC-32 differ): the folder was tampered with; rebuild it")
    check_against_plan(manifest, program, where)
    return Build(folder, manifest, program)


def load_reference(build: Build, allow_pickle: bool = False):
    """The PyTorch reference saved in the build. Trust comes from the caller (the user's
    --allow-pickle), never from the folder: the manifest's ``allow_pickle`` is ignored."""
    from dynexport.harness.manifest_schema import member_path
    from dynexport.loading import load_model

    reference = build.manifest.get("reference")
    if not reference:
        raise PlanError(f"'{build.folder}' holds no reference model (built by an older dynexport?): rebuild it")
    return load_model(member_path(build.folder, reference["file"], "the reference model"), allow_pickle=allow_pickle)


# -- the native run -----------------------------------------------------------------------------
def _decision_record_split(program: FrameProgram, records: np.ndarray):
    """Driver decision records (per layer: block bytes, then channel bytes) -> (masks, channels)."""
    masks, channels, offset = [], [], 0
    for blocks, out_channels in layer_sizes(program):
        masks.append(records[:, offset:offset + blocks])
        channels.append(records[:, offset + blocks:offset + blocks + out_channels])
        offset += blocks + out_channels
    empty = np.zeros((len(records), 0), np.uint8)
    return np.concatenate([empty, *masks], axis=1), np.concatenate([empty, *channels], axis=1)


def _physical_frames(frames: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(frames.transpose(0, 2, 3, 1), dtype=np.float32)


def run_native(build: Build, backend: str, clip: VerifyClip, device: str, reference: StreamRun | None = None,
               extra_options: list[str] | None = None, timeout: float | None = None) -> StreamRun:
    """Run ``clip`` through the native runtime on ``device``; with ``reference``, blocks in the
    tie band take the reference's decision."""
    from dynexport.harness.devices import run_driver

    program = build.program
    out_dims = program.tensors[program.outputs[0]].shape
    record = sum(b + c for b, c in layer_sizes(program))
    with tempfile.TemporaryDirectory(prefix="dynexport-verify-") as tmp:
        tmp = Path(tmp)
        files = {"plan": build.folder / build.manifest["plan"]["file"], "artifact": build.artifact(backend),
                 "frames": tmp / "frames.bin", "outputs": tmp / "outputs.bin", "decisions": tmp / "decisions.bin",
                 "stats": tmp / "stats.jsonl"}
        _physical_frames(clip.frames).tofile(files["frames"])
        if reference is not None and reference.tie_masks is not None and reference.tie_masks.size:
            files["tie-decisions"] = tmp / "ties.bin"
            np.ascontiguousarray(reference.tie_masks, dtype=np.uint8).tofile(files["tie-decisions"])
        options = ["--reset-frames", ",".join(str(r) for r in clip.resets), "--warmup", "0"] + (extra_options or [])
        run_driver(device, files, options, timeout, backend=backend)
        frames = len(clip.frames)
        outputs = np.fromfile(files["outputs"], dtype=np.float32)
        if outputs.size != frames * int(np.prod(out_dims)):
            raise DynexportError(f"native runtime wrote {outputs.size} output values, expected {frames} x {out_dims}")
        records = np.fromfile(files["decisions"], dtype=np.uint8).reshape(frames, record)
        stats = [json.loads(line) for line in files["stats"].read_text().splitlines() if line.strip()]
    masks, channels = _decision_record_split(program, records)
    return StreamRun(outputs.reshape(frames, *out_dims), masks, channels, stats)


# -- comparison -----------------------------------------------------------------------------------
@dataclasses.dataclass
class BackendReport:
    backend: str
    device: str
    frames: int
    max_abs_err: float
    max_rel_err: float
    drift_ratio: float
    gate_agreement: float
    ties: int
    disagreements: int
    frame_rel_err: list[float]
    failures: list[str]

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_json(self) -> dict:
        return {"max_abs_err": self.max_abs_err, "max_rel_err": self.max_rel_err, "drift_ratio": self.drift_ratio,
                "gate_agreement": self.gate_agreement, "frames": self.frames, "passed": self.passed,
                "ties": self.ties, "gate_disagreements": self.disagreements, "device": self.device,
                "failures": self.failures}


def compare_runs(backend: str, device: str, reference: StreamRun, native: StreamRun) -> BackendReport:
    frames = len(reference.outputs)
    errors = np.abs(native.outputs.astype(np.float64) - reference.outputs).reshape(frames, -1).max(axis=1)
    value_range = float(reference.outputs.max() - reference.outputs.min()) or 1.0
    relative = errors / value_range
    drift = float(relative[-1] / max(relative[0], 1e-12)) if frames > 1 else 1.0
    equal_blocks = native.block_masks == reference.block_masks
    equal_channels = native.channels == reference.channels
    entries = equal_blocks.size + equal_channels.size
    disagreements = int(entries - equal_blocks.sum() - equal_channels.sum())
    ties = sum(layer.get("ties", 0) for frame in native.stats for layer in frame.get("layers", []))
    failures = []
    if relative.max() > RELATIVE_TOLERANCE:
        worst = int(relative.argmax())
        failures.append(f"output error {relative.max():.2e} of the output range at frame {worst} "
                        f"> {RELATIVE_TOLERANCE:.0e}")
    if drift > DRIFT_LIMIT and relative[-1] > DRIFT_FLOOR:
        failures.append(f"error grows over the clip: last frame {relative[-1]:.2e} is {drift:.1f}x the first")
    if disagreements:
        frame = int(np.argwhere((~equal_blocks).any(axis=1) | (~equal_channels).any(axis=1))[0, 0])
        failures.append(f"{disagreements} gate decisions differ from the reference (first at frame {frame})")
    return BackendReport(backend, device, frames, float(errors.max()), float(relative.max()), drift,
                         float((equal_blocks.sum() + equal_channels.sum()) / entries) if entries else 1.0,
                         int(ties), disagreements, [float(r) for r in relative], failures)


def verify(folder, clip_path=None, synthetic: str | None = None, frames: int | None = None,
           backends: list[str] | None = None, device: str = "host", resets=(), allow_pickle: bool = False,
           progress: Callable[[str], None] | None = None) -> list[BackendReport]:
    from dynexport.harness.clips import load_clip, synthetic_clip

    say = progress or (lambda message: None)
    build = open_build(folder)
    available = build.manifest.get("backends", [])
    backends = backends or available
    for name in backends:
        if name not in available:
            raise PlanError(f"--backend {name!r}: this build has {', '.join(available) or 'no backends'}")
    if clip_path is not None and synthetic is not None:
        raise DynexportError("give --clip or --synthetic, not both")
    if clip_path is not None:
        clip = load_clip(clip_path, build.manifest, frames, resets)
    else:
        clip = synthetic_clip(synthetic or "mixed", build.manifest, frames, resets)
    say(f"reference: {len(clip.frames)} frames of {clip.name} through PyTorch")
    reference = run_reference(load_reference(build, allow_pickle), build.program, clip.frames, clip.resets)
    reports = []
    for backend in backends:
        say(f"{backend}: native runtime on {device}")
        native = run_native(build, backend, clip, device, reference)
        reports.append(compare_runs(backend, device, reference, native))
    return reports
