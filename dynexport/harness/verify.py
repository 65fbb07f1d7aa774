"""``dynexport verify``: stream a clip through the PyTorch reference and through each backend
artifact via the native runtime (on the host, under qemu-arm64 or on an Android device) and
compare frame by frame.

Tolerances (one place; the README and ``--help`` quote them):
- outputs: max |runtime - reference| / (range of the reference output over the clip)
  <= ``RELATIVE_TOLERANCE`` on every frame, or, when that fails, <= ``DENSE_BASELINE_FACTOR``
  times the largest error of the model's dense export on the same backend, device and clip
  (measured then: a deep network's float error on ARM XNNPACK is the backend's, not the plan's);
- drift: the last frame's relative error over the first's is ``drift_ratio``; it fails
  only above ``DRIFT_LIMIT`` *and* when the last frame's error exceeds ``DRIFT_FLOOR``
  (a ratio of two rounding errors means nothing);
- gates: every block (patch) decision and every D-STEP channel decision equal to the
  reference's. A block whose score sits within the runtime's tie band of its threshold
  (``DYNRT_TIE_EPSILON`` in dynrt.h) takes the reference's decision in verification runs,
  so a rounding difference never cascades; such ties are counted, not failed. Layers that
  decide on any change (norm gates at threshold 0, e.g. the compiler's change-driven
  convolutions, ``gating/change_driven.py``) are left out: which of their blocks changed
  depends on rounding in the layers before them; their outputs are what is compared.

What ran is what is reported (``BackendReport.status``): a backend with a structural check
(``Backend.structural_check``, e.g. Core ML's package against the plan) is checked first; its
numerics run through the native driver on ``--device`` (``Backend.numerics == "driver"``) or
through the plan interpreter over the backend's host runner on this machine ("host_runner"),
and are "not run" when that runner says it cannot run here (Core ML off macOS). A backend
passes only when its numerics ran and passed; "structural: pass; numerics: not run" is not a
pass, and ``dynexport verify`` exits with ``EXIT_INCOMPLETE`` for it (README).
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
# An output error above RELATIVE_TOLERANCE still passes when, on every frame, it is at most
# this many times the largest error of the model's dense export run by the same backend on the
# same device and clip: that much is the backend's own float arithmetic (a 52-layer net on ARM
# XNNPACK), which no plan can undercut.
DENSE_BASELINE_FACTOR = 2.0
DRIFT_LIMIT = 10.0
DRIFT_FLOOR = 1e-5
# dynexport verify's exit status when nothing failed but some numerics did not run here
EXIT_INCOMPLETE = 3


@dataclasses.dataclass
class Build:
    folder: Path
    manifest: dict
    program: FrameProgram

    def artifact(self, backend: str) -> Path:
        """The backend's artifact: a file, or a folder for a directory artifact."""
        return self.folder / BACKENDS[backend].artifact


def _directory_files(folder: Path, backend: str, contents: dict[str, bytes], where: str) -> dict[str, bytes]:
    """The files of a directory artifact as listed (and checksummed) in the manifest; refuses a
    folder with no listed file or with a file the manifest does not list (a reader of the
    package could read it although nothing checked it)."""
    artifact = BACKENDS[backend].artifact
    prefix = artifact + "/"
    files = {name[len(prefix):]: data for name, data in contents.items() if name.startswith(prefix)}
    if not files:
        raise PlanError(f"'{where}': the {backend} artifact folder '{artifact}' has no file among the checksummed "
                        f"artifacts: refused")
    root = folder / artifact
    if root.is_symlink() or not root.is_dir():
        raise PlanError(f"'{root}' (the {backend} artifact) is not a folder: refused")
    on_disk = {path.relative_to(root).as_posix() for path in root.rglob("*") if not path.is_dir() or path.is_symlink()}
    unlisted = sorted(on_disk - set(files))
    if unlisted:
        raise PlanError(f"'{root}' holds {', '.join(unlisted[:3])}{' ...' if len(unlisted) > 3 else ''}, which the "
                        f"manifest does not list: the folder was changed after the build; rebuild it")
    return files


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
    from targets.backend import directory_stream

    needed = {manifest["plan"]["file"]: "the plan", **{BACKENDS[b].artifact: f"the {b} artifact"
                                                         for b in manifest["backends"]
                                                         if BACKENDS[b].artifact_kind == "file"}}
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
        if BACKENDS[backend].artifact_kind == "directory":
            data = directory_stream(_directory_files(folder, backend, contents, where))
        else:
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
    model = load_model(member_path(build.folder, reference["file"], "the reference model"), allow_pickle=allow_pickle)
    return _as_built(model, reference.get("change_driven", []), build.folder)


def _as_built(model, paths, folder):
    """The reference with the convolutions the plan gates at threshold 0 gated so too
    (gating/change_driven.py): manifest field reference.change_driven."""
    from torch import nn

    from dynexport.errors import ConversionError
    from dynexport.gating.change_driven import make_change_driven

    if not isinstance(paths, list) or not all(isinstance(p, str) and p for p in paths):
        raise PlanError(f"'{folder}/manifest.json': reference.change_driven: expected a list of module paths, "
                        f"got {paths!r:.60}")
    if paths and not isinstance(model, nn.Module):
        raise PlanError(f"'{folder}/manifest.json': reference.change_driven names convolutions, but the reference "
                        f"is a torch.export program")
    try:
        return make_change_driven(model, paths)
    except ConversionError as exc:
        raise PlanError(f"'{folder}/manifest.json': reference.change_driven does not fit the reference model: "
                        f"{exc}") from None


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
    structural: str | None = None  # "pass" / "fail"; None: the backend has no structural check
    not_run: str | None = None     # why the numerics did not run (then the numeric fields are NaN)
    # the dense export's largest error relative to the output range, when it was measured
    # (only when the plan's output error exceeded RELATIVE_TOLERANCE: DENSE_BASELINE_FACTOR)
    dense_baseline_rel_err: float | None = None
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def numerics(self) -> str:
        if self.not_run is not None:
            return "not run"
        return "fail" if any(not f.startswith("structure: ") for f in self.failures) else "pass"

    @property
    def passed(self) -> bool:
        """Everything ran and passed: numerics that did not run are never a pass."""
        return not self.failures and self.not_run is None

    @property
    def status(self) -> str:
        """"pass", "fail", or "not run" (nothing failed, the numerics did not run)."""
        return "fail" if self.failures else "not run" if self.not_run is not None else "pass"

    def summary(self) -> str:
        """One line: what ran and its result, e.g. "structural: pass; numerics: not run (needs macOS)"."""
        numerics = f"not run ({self.not_run})" if self.not_run is not None else self.numerics
        parts = ([f"structural: {self.structural}"] if self.structural is not None else []) + [f"numerics: {numerics}"]
        return "; ".join(parts)

    def as_json(self) -> dict:
        return {"max_abs_err": _number(self.max_abs_err), "max_rel_err": _number(self.max_rel_err),
                "drift_ratio": _number(self.drift_ratio), "gate_agreement": _number(self.gate_agreement),
                "frames": self.frames, "passed": self.passed, "status": self.status, "structural": self.structural,
                "numerics": self.numerics, "not_run": self.not_run, "summary": self.summary(),
                "ties": self.ties, "gate_disagreements": self.disagreements, "device": self.device,
                "failures": self.failures, "notes": self.notes,
                "dense_baseline_rel_err": None if self.dense_baseline_rel_err is None
                else _number(self.dense_baseline_rel_err)}


def _number(value: float) -> float | None:
    """JSON has no NaN: a value that was not measured is null."""
    return None if value != value else value


def not_run_report(backend: str, device: str, frames: int, reason: str, structural: str | None,
                   failures: list[str]) -> BackendReport:
    nan = float("nan")
    return BackendReport(backend, device, frames, nan, nan, nan, nan, 0, 0, [], list(failures), structural, reason)


OUTPUT_ERROR = "output error "


def compare_runs(backend: str, device: str, reference: StreamRun, native: StreamRun,
                 program: FrameProgram | None = None) -> BackendReport:
    """With ``program``, the decisions of layers that decide on any change
    (``Layer.decides_on_any_change``) are left out of the gate comparison."""
    frames = len(reference.outputs)
    errors = np.abs(native.outputs.astype(np.float64) - reference.outputs).reshape(frames, -1).max(axis=1)
    value_range = float(reference.outputs.max() - reference.outputs.min()) or 1.0
    relative = errors / value_range
    drift = float(relative[-1] / max(relative[0], 1e-12)) if frames > 1 else 1.0
    equal_blocks = native.block_masks == reference.block_masks
    if program is not None:
        compared = np.concatenate([np.zeros(0, bool)] + [np.full(layer.grid.num_blocks, not layer.decides_on_any_change)
                                                          for layer in program.layers])
        equal_blocks = equal_blocks[:, compared]
    equal_channels = native.channels == reference.channels
    entries = equal_blocks.size + equal_channels.size
    disagreements = int(entries - equal_blocks.sum() - equal_channels.sum())
    ties = sum(layer.get("ties", 0) for frame in native.stats for layer in frame.get("layers", []))
    failures = []
    if relative.max() > RELATIVE_TOLERANCE:
        worst = int(relative.argmax())
        failures.append(f"{OUTPUT_ERROR}{relative.max():.2e} of the output range at frame {worst} "
                        f"> {RELATIVE_TOLERANCE:.0e}")
    if drift > DRIFT_LIMIT and relative[-1] > DRIFT_FLOOR:
        failures.append(f"error grows over the clip: last frame {relative[-1]:.2e} is {drift:.1f}x the first")
    if disagreements:
        frame = int(np.argwhere((~equal_blocks).any(axis=1) | (~equal_channels).any(axis=1))[0, 0])
        failures.append(f"{disagreements} gate decisions differ from the reference (first at frame {frame})")
    return BackendReport(backend, device, frames, float(errors.max()), float(relative.max()), drift,
                         float((equal_blocks.sum() + equal_channels.sum()) / entries) if entries else 1.0,
                         int(ties), disagreements, [float(r) for r in relative], failures)


def run_interpreted(build: Build, runner, clip: VerifyClip) -> StreamRun:
    """Run ``clip`` through the plan interpreter (dynexport/plan/interpreter.py) with the
    segments run by ``runner`` (a backend's host runner): the numeric check of a backend the
    native driver does not run (Core ML, on macOS). Decisions are the interpreter's own (no
    tie band imposed)."""
    import torch

    from dynexport.harness.reference import COMPUTE
    from dynexport.plan.interpreter import FrameProgramInterpreter

    program = build.program
    interpreter = FrameProgramInterpreter(program, runner)
    outputs, masks, channels = [], [], []
    for t, frame in enumerate(clip.frames):
        if t in clip.resets:
            interpreter.reset()
        output = interpreter.step(torch.from_numpy(np.ascontiguousarray(frame[None], dtype=np.float32))).numpy()
        outputs.append(np.ascontiguousarray(output.transpose(0, 2, 3, 1) if output.ndim == 4 else output))
        frame_masks, frame_channels = [np.zeros(0, np.uint8)], [np.zeros(0, np.uint8)]
        for decisions, (blocks, out_channels) in zip(interpreter.layer_decisions(), layer_sizes(program)):
            active, choice = decisions if isinstance(decisions, tuple) else (decisions, None)
            mask = np.zeros(blocks, np.uint8)
            mask[list(active)] = 1
            frame_masks.append(mask)
            frame_channels.append(np.full(out_channels, COMPUTE, np.uint8) if choice is None
                                  else np.asarray(choice, np.uint8))
        masks.append(np.concatenate(frame_masks))
        channels.append(np.concatenate(frame_channels))
    return StreamRun(np.stack(outputs).astype(np.float32), np.stack(masks), np.stack(channels))


def structural_failures(build: Build, backend: str) -> list[str] | None:
    """The backend's structural check of its artifact against the plan (None: it has none)."""
    check = BACKENDS[backend].load_structural_check()
    if check is None:
        return None
    options = build.manifest.get("build_options", {})
    options = options.get(backend, {}) if isinstance(options, dict) else {}
    return list(check(build.artifact(backend), build.program, options if isinstance(options, dict) else {}))


def verify_backend(build: Build, backend: str, clip: VerifyClip, device: str, reference: StreamRun,
                   say: Callable[[str], None]) -> BackendReport:
    """Structural check (if the backend has one), then the numerics where they can run."""
    declared = BACKENDS[backend]
    problems = structural_failures(build, backend)
    structural = None if problems is None else ("fail" if problems else "pass")
    failures = [f"structure: {p}" for p in problems or []]
    if declared.numerics == "driver":
        say(f"{backend}: native runtime on {device}")
        report = compare_runs(backend, device, reference, run_native(build, backend, clip, device, reference),
                              build.program)
    else:
        runner_class = declared.load_host_runner()
        reason = runner_class.unavailable() if hasattr(runner_class, "unavailable") else None
        if reason is None and device != "host":
            reason = f"its numerics run on this machine only, not on --device {device}"
        if reason is not None:
            return not_run_report(backend, device, len(clip.frames), reason, structural, failures)
        say(f"{backend}: plan interpreter over {runner_class.__name__} on this machine")
        report = compare_runs(backend, "host", reference,
                              run_interpreted(build, runner_class(build.artifact(backend)), clip), build.program)
    report.structural = structural
    report.failures = failures + report.failures
    return report


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
    model = load_reference(build, allow_pickle)
    reference = run_reference(model, build.program, clip.frames, clip.resets)
    reports = []
    for backend in backends:
        report = verify_backend(build, backend, clip, device, reference, say)
        if BACKENDS[backend].numerics == "driver" and report.failures and all(
                f.startswith(OUTPUT_ERROR) for f in report.failures):
            say(f"{backend}: the dense export on {device}, for its own float error")
            _weigh_against_dense_export(build, model, backend, clip, device, reference, report)
        reports.append(report)
    return reports


def _weigh_against_dense_export(build: Build, model, backend: str, clip: VerifyClip, device: str,
                                reference: StreamRun, report: BackendReport) -> None:
    """Runs the model's dense export (gates removed) on the same backend, device and clip and
    measures its error against the dense reference; an output error of the plan within
    DENSE_BASELINE_FACTOR of that on every frame is the backend's arithmetic: the output
    failure becomes a note. ``model``: the build's reference (load_reference)."""
    from dynexport.harness.dense import build_dense, dense_counterpart

    with tempfile.TemporaryDirectory(prefix="dynexport-verify-dense-") as where:
        built = build_dense(model, build.manifest["input"]["shape"], Path(where), backend=backend)
        dense = open_build(built.out)
        dense_reference = run_reference(dense_counterpart(model), dense.program, clip.frames, clip.resets)
        dense_native = run_native(dense, backend, clip, device)
    frames = len(reference.outputs)
    value_range = float(reference.outputs.max() - reference.outputs.min()) or 1.0
    dense_errors = np.abs(dense_native.outputs.astype(np.float64) - dense_reference.outputs).reshape(frames, -1)
    allowed = max(RELATIVE_TOLERANCE, DENSE_BASELINE_FACTOR * float(dense_errors.max()) / value_range)
    report.dense_baseline_rel_err = float(dense_errors.max()) / value_range
    if max(report.frame_rel_err) <= allowed:
        report.notes = [f"{f}, but within {DENSE_BASELINE_FACTOR:.0f}x of the dense export's own error on this "
                        f"device ({report.dense_baseline_rel_err:.2e}): the backend's float arithmetic"
                        for f in report.failures]
        report.failures = []
    else:
        report.failures = [f"{f} (the dense export errs {report.dense_baseline_rel_err:.2e} here)"
                           for f in report.failures]
