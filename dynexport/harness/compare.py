"""``dynexport bench OUT --baseline MODEL``: what pruning, gating and both buy, in one table.

``MODEL`` is the network before OUT's pruning (and, if it has gated layers, before nothing
else): typically the unpruned gated model, or the plain trained network OUT was converted
from. The rows, each present when it exists:

* ``original, dense``  the baseline with every gated layer replaced by its convolution;
* ``original, gated``  the baseline's dynamic plan (only if the baseline has gated layers);
* ``OUT, dense``       OUT's model without its gates (its pruned channels removed, as built);
* ``OUT, gated``       OUT's dynamic plan.

Timing: every row is run by the native runtime interleaved frame by frame with the original
dense export (the verify driver's two-plan mode), on the same clip; each pass runs every row
in turn (one driver run each, after its warm-up pass), PASSES times; per frame the median
over passes. Each speedup is the ratio of per-frame medians of the row and the original dense
export run beside it, so the ratios hold on a machine whose load changes. MACs per frame are the
model's convolutions and matrix products (torch's FLOP counter), gate MACs included, with a
gated row's executed MACs from the runtime's per-layer statistics (median over frames).
``realized / MAC reduction`` is the speedup over (original dense MACs / row MACs): 1.0 means
the time fell exactly as the arithmetic did. The error is PyTorch's, each row's output
streamed over the clip against the original dense model's, over the range of the latter
(max and mean over frames and elements); the native runtimes' own numerics are ``verify``'s.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from dynexport.errors import CompileError, FrameError
from dynexport.harness.clips import VerifyClip
from dynexport.harness.verify import Build, open_build


@dataclasses.dataclass
class Row:
    label: str
    what: str
    ms: float  # per-frame median
    speedup: float  # original dense / this row, both medians of one interleaved run
    macs: float  # per frame (median), gate MACs included
    mac_ratio: float  # macs / the original dense MACs
    error_max: float | None  # against the original dense output, relative to its range
    error_mean: float | None

    @property
    def realized_over_mac_reduction(self) -> float:
        return self.speedup * self.mac_ratio  # speedup / (1 / mac_ratio)

    def as_json(self) -> dict:
        return {**dataclasses.asdict(self), "realized_over_mac_reduction": self.realized_over_mac_reduction}


@dataclasses.dataclass
class Comparison:
    backend: str
    threads: int
    frames: int
    passes: int
    clip: str
    baseline: str
    rows: list[Row]
    notes: list[str]

    def as_json(self) -> dict:
        return {"backend": self.backend, "threads": self.threads, "frames": self.frames, "passes": self.passes,
                "clip": self.clip, "baseline": self.baseline, "rows": [r.as_json() for r in self.rows],
                "notes": self.notes}


def compare(folder, baseline_path, clip_path=None, synthetic: str | None = None, frames: int | None = None,
            backends: list[str] | None = None, device: str = "host", threads: int = 1, passes: int = 5,
            allow_pickle: bool = False, progress: Callable[[str], None] | None = None) -> list[Comparison]:
    """One ``Comparison`` per backend (see the module docstring)."""
    from dynexport.harness.clips import load_clip, synthetic_clip
    from dynexport.harness.verify import load_reference
    from dynexport.loading import load_model

    build = open_build(folder)
    clip = (load_clip(clip_path, build.manifest, frames) if clip_path is not None
            else synthetic_clip(synthetic or "static_camera", build.manifest, frames))
    if len(clip.frames) < 2:
        raise FrameError(f"clip {clip.name!r} has {len(clip.frames)} frame; bench needs at least 2 (the first frame "
                         f"always runs dense)")
    model = load_reference(build, allow_pickle)
    baseline = load_model(baseline_path, allow_pickle=allow_pickle)
    return compare_clip(build, model, Path(baseline_path), baseline, clip, backends, device, threads, passes,
                        allow_pickle, progress)


def compare_clip(build: Build, model, baseline_path: Path, baseline, clip: VerifyClip,
                 backends: list[str] | None = None, device: str = "host", threads: int = 1, passes: int = 5,
                 allow_pickle: bool = False, progress: Callable[[str], None] | None = None) -> list[Comparison]:
    from dynexport.build import build as build_model
    from dynexport.harness.dense import build_dense, dense_counterpart, model_macs
    from dynexport.pruning.build_step import as_built

    say = progress or (lambda message: None)
    shape = tuple(build.manifest["input"]["shape"])
    _check_same_network(baseline, model, shape, baseline_path)
    baseline_gated = _has_gates(baseline)
    out_gated = bool(build.program.layers)
    pruning = build.manifest.get("pruning", {}).get("structured", {})
    pruned = isinstance(pruning, dict) and pruning.get("removed_channels", 0) > 0
    out_name = "pruned" if pruned else "OUT"
    say("MACs of the dense models")
    say_quiet = lambda m: None  # noqa: E731
    original_macs = model_macs(dense_counterpart(baseline), shape)
    out_dense_macs = model_macs(dense_counterpart(as_built(model, shape, say_quiet)), shape)
    say("errors against the original dense model (PyTorch)")
    reference = _stream(dense_counterpart(baseline), clip)
    errors = {"original, gated": _error(_stream(baseline, clip), reference) if baseline_gated else None,
              "OUT, dense": _error(_stream(dense_counterpart(model), clip), reference),
              "OUT, gated": _error(_stream(model, clip), reference) if out_gated else None}
    notes = []
    if not baseline_gated:
        notes.append(f"the baseline {baseline_path.name} has no gated layers: no 'original, gated' row (give the "
                     f"unpruned gated model as --baseline for it)")
    if not pruned:
        notes.append(f"{build.folder} was built without removed channels: its dense row is the gated model's "
                     f"dense export")
    comparisons = []
    for backend in backends or build.manifest.get("backends", []):
        with tempfile.TemporaryDirectory(prefix="dynexport-compare-") as tmp:
            tmp = Path(tmp)
            say(f"{backend}: build the original's dense export")
            original_dense = build_dense(baseline, shape, tmp / "original-dense", backend=backend,
                                         progress=lambda m, *count: say(f"original dense: {m}")).out
            plans: list[tuple[str, str, Build, float | None]] = []  # label, what, build, dense MACs if dense
            if baseline_gated:
                say(f"{backend}: build the original's dynamic plan")
                built = build_model(baseline_path, tmp / "original-gated", target="host", backend=backend,
                                    input_shape=shape, allow_pickle=allow_pickle,
                                    progress=lambda m, *count: say(f"original gated: {m}"))
                plans.append(("original, gated", f"{baseline_path.name}, dynamic plan", open_build(built.out),
                              None))
            say(f"{backend}: build OUT's dense export")
            out_dense = build_dense(model, shape, tmp / "out-dense", backend=backend,
                                    progress=lambda m, *count: say(f"{out_name} dense: {m}")).out
            plans.append(("OUT, dense", f"{out_name}, gates removed", open_build(out_dense), out_dense_macs))
            if out_gated:
                plans.append(("OUT, gated", f"{out_name}, dynamic plan", build, None))
            say(f"{backend}: {len(plans)} plans, each interleaved with the original dense export, "
                f"{len(clip.frames)} frames x {passes} passes")
            rows, original_ns = [], []
            for (label, what, plan, dense_macs), times in zip(plans, _round_robin(plans, original_dense, backend,
                                                                                  clip, device, threads, passes)):
                original_ns.append(times.dense_ns)
                if dense_macs is None:  # a dynamic plan: its ungated layers run dense, its gated ones as reported
                    total = (original_macs if label.startswith("original") else out_dense_macs)
                    macs = float(np.median(total - times.gated_dense_macs + times.executed_macs))
                else:
                    macs = float(dense_macs)
                error = errors[label]
                rows.append(Row(_label(label, pruned), what, float(np.median(times.dynamic_ns)) / 1e6,
                                float(np.median(times.dense_ns) / np.median(times.dynamic_ns)), macs,
                                macs / original_macs, *(error if error is not None else (None, None))))
            original_ms = float(np.median(np.concatenate(original_ns))) / 1e6
            rows.insert(0, Row("original, dense", f"{baseline_path.name}, gates removed", original_ms, 1.0,
                               float(original_macs), 1.0, 0.0, 0.0))
            comparisons.append(Comparison(backend, threads, len(clip.frames), passes, clip.name, str(baseline_path),
                                          rows, notes))
    return comparisons


def _round_robin(plans, original_dense: Path, backend: str, clip: VerifyClip, device: str, threads: int,
                 passes: int):
    """Per plan, its frame times beside the original dense export's, one driver run per plan and
    pass, the plans taken in turn within every pass: a load that changes during the run falls
    on every row alike. Per frame, the median over passes."""
    from dynexport.harness.bench import FrameTimes, _run_side_by_side

    runs: list[list[FrameTimes]] = [[] for _ in plans]
    for _ in range(passes):
        for i, (_, _, plan, _) in enumerate(plans):
            runs[i].append(_run_side_by_side(plan, original_dense, backend, clip, device, threads, 1))
    merged = []
    for per_pass in runs:
        first = per_pass[0]  # decisions, and so MACs and active blocks, are the same in every pass

        def median(key):
            return np.median(np.stack([getattr(t, key) for t in per_pass]), axis=0)

        merged.append(dataclasses.replace(first, dense_ns=median("dense_ns"), dynamic_ns=median("dynamic_ns"),
                                          segments_ns=median("segments_ns")))
    return merged


def _label(label: str, pruned: bool) -> str:
    if not label.startswith("OUT"):
        return label
    return {"OUT, dense": "pruned, dense" if pruned else "OUT, dense",
            "OUT, gated": "pruned + gated" if pruned else "OUT, gated"}[label]


def _has_gates(model) -> bool:
    import torch

    from dynexport.nn import GatedLayer

    if isinstance(model, torch.export.ExportedProgram):
        from dynexport.nn import ExportedModel

        return bool(ExportedModel(model).gates)
    return any(isinstance(m, GatedLayer) for m in model.modules())


def _check_same_network(baseline, model, shape, baseline_path: Path) -> None:
    """The baseline takes OUT's frames and gives an output of OUT's shape."""
    import torch

    from dynexport.harness.dense import dense_counterpart

    def output_shape(m, who):
        runnable = m.module() if isinstance(m, torch.export.ExportedProgram) else m
        try:
            with torch.no_grad():
                return tuple(runnable(torch.zeros(shape)).shape)
        except Exception as exc:  # a wrong channel count or size surfaces as any kind of error
            raise CompileError(f"--baseline {baseline_path}: {who} does not run on OUT's frames {list(shape)} "
                               f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}); "
                               f"the baseline must be the same network before pruning") from None

    expected = output_shape(dense_counterpart(model), "OUT's model")
    got = output_shape(dense_counterpart(baseline), "the baseline")
    if got != expected:
        raise CompileError(f"--baseline {baseline_path}: its output is {list(got)}, OUT's is {list(expected)}; the "
                           f"baseline must be the same network before pruning (pruning keeps the output shape)")


def _stream(model, clip: VerifyClip) -> np.ndarray:
    import torch

    from dynexport import streaming
    from dynexport.nn import ExportedModel

    if isinstance(model, torch.export.ExportedProgram):
        model = ExportedModel(model)
    outputs = []
    for t, frame in enumerate(clip.frames):
        if t in clip.resets:
            streaming.reset(model)
        outputs.append(streaming.step(model, torch.from_numpy(frame[None])).detach().numpy())
    streaming.reset(model)
    return np.stack(outputs)


def _error(outputs: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    spread = float(reference.max() - reference.min()) or 1.0
    difference = np.abs(outputs.astype(np.float64) - reference) / spread
    return float(difference.max()), float(difference.mean())
