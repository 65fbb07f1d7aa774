"""``dynexport bench``: the realized speedup of the dynamic plan over the dense export of the
same model, both run by the native runtime in one process, frame by frame interleaved (the
verify driver's bench mode), on the same clip.

Per backend it reports per-frame medians over repeated passes: dense and dynamic wall time,
the realized speedup (dense / dynamic), two ideals over the whole model (gate MACs included,
the layers without a gate counted in both): *as run*, dense MACs / the MACs the runtime
executed, and *model*, dense MACs / the MACs the PyTorch reference's own decisions need
(``reference_macs``: D-STEP's skipped and reused channels saved, of which a plan saves only
whole output-channel groups without a compute channel; gate and policy MACs in both; for SkipConv the two agree up to the runtime's dense fallback, whole border tiles and settled
gates), realized / ideal against the model's ideal (so it means the same for every gate
kind; against the as-run one for a .pt2 reference, which cannot count),
the share of the dynamic frame spent outside backend segments (gates, block lists,
gather/scatter, branches, calls), and the cost of a frame identical to the previous one
relative to a dense frame.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from dynexport.errors import FrameError
from dynexport.harness.clips import VerifyClip
from dynexport.harness.verify import Build, _physical_frames, load_reference, open_build


@dataclasses.dataclass
class FrameTimes:
    """Per frame, the median over passes."""

    dense_ns: np.ndarray
    dynamic_ns: np.ndarray
    segments_ns: np.ndarray
    executed_macs: np.ndarray  # gated layers, as run, gates included
    gated_dense_macs: np.ndarray
    active: np.ndarray  # [frames, layers] active blocks
    total: np.ndarray  # [frames, layers] blocks


@dataclasses.dataclass
class BenchReport:
    backend: str
    threads: int
    frames: int
    passes: int
    dense_ms: float
    dynamic_ms: float
    ideal_as_run: float  # dense MACs / MACs the runtime executed
    ideal_model: float | None  # dense MACs / MACs the reference's decisions need (None: .pt2 reference)
    executed_macs: float  # whole model per frame, median, as run
    needed_macs: float | None  # whole model per frame, median, the reference's decisions
    overhead_share: float
    unchanged_frame_ratio: float
    active_fraction: float
    layer_active_fraction: dict[str, float]
    per_frame: FrameTimes

    @property
    def realized_speedup(self) -> float:
        return self.dense_ms / self.dynamic_ms

    @property
    def ideal_speedup(self) -> float:
        """The ideal realized / ideal is taken against: the model's, else the as-run one."""
        return self.ideal_model if self.ideal_model is not None else self.ideal_as_run

    @property
    def ideal_basis(self) -> str:
        return "model" if self.ideal_model is not None else "as run"

    @property
    def realized_over_ideal(self) -> float:
        return self.realized_speedup / self.ideal_speedup

    def as_json(self) -> dict:
        return {"dense_ms": self.dense_ms, "dynamic_ms": self.dynamic_ms, "realized_speedup": self.realized_speedup,
                "ideal_as_run": self.ideal_as_run, "ideal_model": self.ideal_model,
                "executed_macs": self.executed_macs, "needed_macs": self.needed_macs,
                "realized_over_ideal": self.realized_over_ideal, "ideal_basis": self.ideal_basis,
                "overhead_share": self.overhead_share, "unchanged_frame_ratio": self.unchanged_frame_ratio,
                "active_fraction": self.active_fraction, "layer_active_fraction": self.layer_active_fraction,
                "frames": self.frames, "passes": self.passes, "threads": self.threads}


def _frame_times(stats: list[dict], frames: int) -> FrameTimes:
    by_frame: list[list[dict]] = [[] for _ in range(frames)]
    for line in stats:
        by_frame[line["frame"]].append(line)

    def median(key):
        return np.array([np.median([line[key] for line in lines]) for lines in by_frame], dtype=np.float64)

    first = [lines[0] for lines in by_frame]  # decisions are the same in every pass
    return FrameTimes(
        median("dense_ns"), median("wall_ns"), median("segments_ns"),
        np.array([sum(layer["executed_macs"] for layer in line["layers"]) for line in first], dtype=np.float64),
        np.array([sum(layer["dense_macs"] for layer in line["layers"]) for line in first], dtype=np.float64),
        np.array([[layer["active"] for layer in line["layers"]] for line in first], dtype=np.float64).reshape(frames, -1),
        np.array([[layer["total"] for layer in line["layers"]] for line in first], dtype=np.float64).reshape(frames, -1),
    )


def _run_side_by_side(build: Build, dense_folder: Path, backend: str, clip: VerifyClip, device: str, threads: int,
                      passes: int) -> FrameTimes:
    from dynexport.harness.devices import run_driver
    from targets import backend as registered_backend

    with tempfile.TemporaryDirectory(prefix="dynexport-bench-") as tmp:
        tmp = Path(tmp)
        files = {"plan": build.folder / build.manifest["plan"]["file"], "artifact": build.artifact(backend),
                 "dense-plan": dense_folder / "plan.dxfp",
                 "dense-artifact": dense_folder / registered_backend(backend).artifact,
                 "frames": tmp / "frames.bin", "outputs": tmp / "outputs.bin", "stats": tmp / "stats.jsonl"}
        _physical_frames(clip.frames).tofile(files["frames"])
        run_driver(device, files, ["--reset-frames", ",".join(str(r) for r in clip.resets), "--threads", str(threads),
                                   "--repeat", str(passes), "--warmup", "1"], backend=backend)
        stats = [json.loads(line) for line in files["stats"].read_text().splitlines() if line.strip()]
    return _frame_times(stats, len(clip.frames))


def bench(folder, clip_path=None, synthetic: str | None = None, frames: int | None = None,
          backends: list[str] | None = None, device: str = "host", threads: int = 1, passes: int = 5,
          allow_pickle: bool = False, progress: Callable[[str], None] | None = None) -> list[BenchReport]:
    """``dynexport bench OUT``: the clip from a file or a synthetic preset."""
    from dynexport.harness.clips import load_clip, synthetic_clip

    build = open_build(folder)
    clip = (load_clip(clip_path, build.manifest, frames) if clip_path is not None
            else synthetic_clip(synthetic or "static_camera", build.manifest, frames))
    if len(clip.frames) < 2:  # frame 0 runs dense by definition: one frame measures no saving
        raise FrameError(f"clip {clip.name!r} has {len(clip.frames)} frame; bench needs at least 2 (the first frame "
                         f"always runs dense, the savings are in the frames after it)")
    return bench_clip(build, clip, load_reference(build, allow_pickle), backends, device, threads, passes, progress)


def bench_clip(build: Build, clip: VerifyClip, model, backends: list[str] | None = None, device: str = "host",
               threads: int = 1, passes: int = 5, progress: Callable[[str], None] | None = None,
               dense_folder: Path | None = None) -> list[BenchReport]:
    """Bench ``build`` on ``clip``; ``dense_folder``: an already built dense export of ``model``."""
    from dynexport.harness.dense import build_dense, dense_counterpart, model_macs
    from dynexport.harness.reference import reference_macs
    from dynexport.pruning.build_step import as_built

    say = progress or (lambda message: None)
    backends = backends or build.manifest.get("backends", [])
    unchanged = VerifyClip("unchanged", np.repeat(clip.frames[:1], min(len(clip.frames), 16), axis=0))
    input_shape = build.manifest["input"]["shape"]
    # of the model as built: a pruned build's zero channels are gone from its plan and its dense export
    built = as_built(model, input_shape)
    total_dense_macs = model_macs(dense_counterpart(built), input_shape)
    say("count the MACs the reference model's decisions need")
    # on the model as built too: a removed (all-zero) channel is no MAC the decisions need
    needed = reference_macs(built, build.program, clip.frames, clip.resets)
    reports = []
    with tempfile.TemporaryDirectory(prefix="dynexport-dense-") as tmp:
        for backend in backends:
            dense = dense_folder
            if dense is None:  # the dense export for this backend, which need not be a default of host
                say(f"build the dense export (gates removed) for {backend}")
                dense = build_dense(model, input_shape, Path(tmp) / backend, backend=backend,
                                    progress=lambda m, *count: say(f"dense export: {m}")).out
            say(f"{backend}: {len(clip.frames)} frames x {passes} passes, dense and dynamic interleaved")
            times = _run_side_by_side(build, dense, backend, clip, device, threads, passes)
            say(f"{backend}: a frame identical to the previous one")
            still = _run_side_by_side(build, dense, backend, unchanged, device, threads, passes)
            reports.append(_report(backend, threads, passes, times, still, total_dense_macs, build, needed))
    return reports


def _report(backend, threads, passes, times: FrameTimes, still: FrameTimes, total_dense_macs: int,
            build: Build, needed_gated: np.ndarray | None = None) -> BenchReport:
    """``needed_gated``: per frame, the gated layers' MACs the reference's decisions need."""
    ungated = total_dense_macs - times.gated_dense_macs
    executed = ungated + times.executed_macs
    needed = None if needed_gated is None else ungated + needed_gated
    steady = slice(1, None) if len(times.dense_ns) > 1 else slice(None)  # frame 0 is dense by definition
    active = times.active[steady].sum(axis=0)
    total = times.total[steady].sum(axis=0)
    names = [layer.name for layer in build.program.layers]
    return BenchReport(
        backend=backend, threads=threads, frames=len(times.dense_ns), passes=passes,
        dense_ms=float(np.median(times.dense_ns)) / 1e6, dynamic_ms=float(np.median(times.dynamic_ns)) / 1e6,
        ideal_as_run=float(np.median(total_dense_macs / executed)),
        ideal_model=None if needed is None else float(np.median(total_dense_macs / needed)),
        executed_macs=float(np.median(executed)),
        needed_macs=None if needed is None else float(np.median(needed)),
        overhead_share=float(np.median((times.dynamic_ns - times.segments_ns) / times.dynamic_ns)),
        # over a dense frame of the clip: the dense session skips a repeated frame's work too
        # (nothing it reads changed), so its own still frames are no baseline
        unchanged_frame_ratio=float(np.median(still.dynamic_ns[1:]) / np.median(times.dense_ns)),
        active_fraction=float(active.sum() / total.sum()) if total.sum() else 1.0,
        layer_active_fraction={name: float(a / t) for name, a, t in zip(names, active, total)},
        per_frame=times,
    )


def plot(reports: list[BenchReport], path) -> None:
    """Time per frame (dense and dynamic) and active fraction per frame, one panel per backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(reports), 1, figsize=(9, 3.2 * len(reports)), squeeze=False)
    for axis, report in zip(axes[:, 0], reports):
        t = report.per_frame
        frames = np.arange(len(t.dense_ns))
        axis.plot(frames, t.dense_ns / 1e6, label="dense export", color="tab:gray")
        axis.plot(frames, t.dynamic_ns / 1e6, label="dynamic plan", color="tab:blue")
        axis.set_xlabel("frame")
        axis.set_ylabel("ms per frame")
        axis.set_title(f"{report.backend}, {report.threads} thread(s): realized {report.realized_speedup:.2f}x, "
                       f"ideal ({report.ideal_basis}) {report.ideal_speedup:.2f}x")
        share = axis.twinx()
        fraction = t.active.sum(axis=1) / np.maximum(t.total.sum(axis=1), 1)
        share.plot(frames, fraction, color="tab:orange", linestyle="--", label="active fraction")
        share.set_ylim(0, 1.05)
        share.set_ylabel("active fraction")
        lines = axis.get_legend_handles_labels()[0] + share.get_legend_handles_labels()[0]
        axis.legend(lines, [line.get_label() for line in lines], loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
