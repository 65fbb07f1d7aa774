"""``dynexport tune``: each gated layer's dense cut-off chosen from measurement on a device.

For every gated layer of a build folder that has both a tile segment and a dense segment,
time the tile segment at each batch K = 1..max_batch (sampled and interpolated for large
bounds, ``cutoff_choice``) and the dense segment on the build's backend, through the native
driver on the device (``segment_timing``: host, qemu-arm64, adb), add the cost of gathering
K tiles (a memory copy measured there too), and choose the largest K
up to which tiles are cheaper at every count (``cutoff_choice.choose_cutoff``). The plan gets
the new cut-offs and the manifest the measured table (``manifest["tuning"]``), written back
with ``build_update``.

Invariants:
- the folder is verified (``open_build``: every file against the manifest's SHA-256) before
  anything is measured, and nothing is written unless every layer was measured;
- a new cut-off is within 0..max_batch of the layer's tile segment, so the runtime never
  packs more tiles than the segment takes; only ``Layer.dense_cutoff`` changes in the plan;
- the manifest's table holds what the choice was made from (measured tile times, dense time,
  copy estimate): ``choose_cutoff`` on it gives the recorded cut-off again.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from pathlib import Path
from typing import Callable

from dynexport.errors import PlanError
from dynexport.harness.build_update import write_plan
from dynexport.harness.cutoff_choice import batches_to_measure, choose_cutoff, interpolate_costs, tile_path_costs
from dynexport.harness.segment_timing import SegmentCall, Timings, time_segments
from dynexport.harness.verify import Build, open_build
from dynexport.plan.frame_program import NO_LAYER, NO_TENSOR, FrameProgram, LayerKind, Op

DEFAULT_ROUNDS = 25
DEFAULT_WARMUP = 3
# Rounds whose interquartile range typically exceeds this share of their median: the machine
# was busy (measured here: another build on the 2 cores doubled a 2 ms call and inflated an
# 8 ms one by 1.5-2x, spreads 0.8-3), so the crossing point moves; the report says so. Quiet,
# the spread was 0.04-0.11 (garbage collection paused while timing).
NOISY = 0.25


@dataclasses.dataclass(frozen=True)
class TunableLayer:
    """A gated layer with both paths: its index and its tile and dense segments' indices."""

    layer: int
    tile_segment: int
    dense_segment: int


def tunable_layers(program: FrameProgram) -> list[TunableLayer]:
    """Gated layers that have both a tile segment (the one RUN_SEGMENT batches by the layer)
    and a dense segment (the one writing the layer's dense output), in plan order. Layers of
    <= 4 blocks have tiles only and a cut-off of 0 means dense only: nothing to choose."""
    tile_segment = {ins.b: ins.a for ins in program.instructions if ins.op == Op.RUN_SEGMENT and ins.b != NO_LAYER}
    found = []
    for index, layer in enumerate(program.layers):
        if index not in tile_segment or layer.dense_output == NO_TENSOR:
            continue
        dense = [i for i, s in enumerate(program.segments) if layer.dense_output in program.segment_outputs(s)]
        if dense:
            found.append(TunableLayer(index, tile_segment[index], dense[0]))
    return found


@dataclasses.dataclass
class LayerTuning:
    name: str
    kind: str
    blocks: int
    max_batch: int
    old_cutoff: int
    new_cutoff: int
    tile_segment: str
    dense_segment: str
    tile_ms: dict[int, float]  # measured: K -> median ms of the tile segment at batch K
    dense_ms: float  # median ms of the dense segment
    copy_ms_per_tile: float  # estimate: gathering one packed tile
    spread: float  # typical interquartile range / median of the timed calls: > NOISY, distrust

    def tile_path_ms(self) -> list[float]:
        """The tile path's cost at K = 1..max_batch (interpolated between measured K)."""
        return tile_path_costs(interpolate_costs(self.tile_ms, self.max_batch), self.copy_ms_per_tile)

    def as_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "blocks": self.blocks, "max_batch": self.max_batch,
                "old_cutoff": self.old_cutoff, "new_cutoff": self.new_cutoff, "tile_segment": self.tile_segment,
                "dense_segment": self.dense_segment, "dense_ms": round(self.dense_ms, 5),
                "copy_ms_per_tile": round(self.copy_ms_per_tile, 6), "spread": round(self.spread, 3),
                "tile_ms": {str(k): round(ms, 5) for k, ms in sorted(self.tile_ms.items())}}

    @classmethod
    def from_json(cls, entry: dict) -> "LayerTuning":
        return cls(entry["name"], entry["kind"], entry["blocks"], entry["max_batch"], entry["old_cutoff"],
                   entry["new_cutoff"], entry["tile_segment"], entry["dense_segment"],
                   {int(k): ms for k, ms in entry["tile_ms"].items()}, entry["dense_ms"], entry["copy_ms_per_tile"],
                   entry.get("spread", 0.0))


@dataclasses.dataclass
class TuneReport:
    folder: Path
    threads: int
    rounds: int
    warmup: int
    layers: list[LayerTuning]
    seconds: float
    written: bool

    load_average: float  # the 1-minute load when tuning began (the machine's other work)
    backend: str = "executorch"  # whose segments were timed
    device: str = "host"  # where (devices.DEVICES)

    @property
    def noisy(self) -> bool:
        return any(layer.spread > NOISY for layer in self.layers)

    def as_json(self) -> dict:
        return {"folder": str(self.folder), "backend": self.backend, "device": self.device, "threads": self.threads,
                "rounds": self.rounds,
                "warmup": self.warmup, "statistic": "median wall ms per call", "machine": _machine(),
                "cpus": os.cpu_count(), "load_average": round(self.load_average, 2), "noisy": self.noisy,
                "cost_model": "tile path = tile segment at K + K x copy_ms_per_tile; dense path = dense segment; "
                              "cut-off = largest K with the tile path cheaper at every K' <= K; "
                              "tile_ms interpolated linearly between measured K",
                "seconds": round(self.seconds, 2), "written": self.written,
                "layers": [layer.as_json() for layer in self.layers]}


Progress = Callable[[str, int, int], None]  # (what, steps done, steps in all)


def tune(folder, threads: int = 1, rounds: int = DEFAULT_ROUNDS, warmup: int = DEFAULT_WARMUP, write: bool = True,
         progress: Progress | None = None, device: str = "host", backend: str | None = None,
         timeout: float | None = None) -> TuneReport:
    """Measure every tunable layer of ``folder`` on ``device`` with ``backend`` (default: the
    build's first) and, with ``write``, store the chosen cut-offs in its plan and the table
    in its manifest."""
    start = time.perf_counter()
    load_average = os.getloadavg()[0]
    if rounds < 1 or warmup < 0 or threads < 1:
        raise ValueError("rounds >= 1, warmup >= 0 and threads >= 1 are required")
    say = progress or (lambda what, done, total: None)
    build = open_build(folder)
    backends = build.manifest.get("backends", [])
    backend = backend or (backends[0] if backends else "none")
    if backend not in backends:
        raise PlanError(f"'{build.folder}' has no {backend} artifact to measure (backends: "
                        f"{', '.join(backends) or 'none'})")
    program = build.program
    candidates = tunable_layers(program)
    if not candidates:
        raise PlanError(f"'{build.folder}' has no gated layer with both a tile and a dense segment: nothing to tune "
                        f"(grids of <= 4 blocks run tiles only; a cut-off of 0 builds no tile segment)")
    say(f"timing {len(candidates)} layer(s) on {device} ({backend})", 0, len(candidates))
    groups = [_layer_calls(program, candidate) for candidate in candidates]
    measured = time_segments(build.folder / build.manifest["plan"]["file"], build.artifact(backend), program, groups,
                             backend, device, threads, rounds, warmup,
                             copy_bytes=_largest_packed_bytes(program, candidates), timeout=timeout)
    results = []
    for position, (candidate, timings) in enumerate(zip(candidates, measured.groups)):
        results.append(_layer_tuning(program, candidate, timings, measured.copy_ms_per_byte))
        say(f"{results[-1].name}: measured", position + 1, len(candidates))
    report = TuneReport(build.folder, threads, rounds, warmup, results, time.perf_counter() - start, write,
                        load_average, backend, device)
    if write:
        _write_back(build, candidates, report)
    return report


def _write_back(build: Build, candidates: list[TunableLayer], report: TuneReport) -> None:
    """The new cut-offs into the plan, and the manifest's layer records and table to match."""
    program = build.program
    for result, candidate in zip(report.layers, candidates):
        program.layers[candidate.layer].dense_cutoff = result.new_cutoff
    new_cutoffs = {result.name: result.new_cutoff for result in report.layers}
    manifest = dict(build.manifest)
    manifest["layers"] = [{**entry, "dense_cutoff_blocks": new_cutoffs.get(entry["name"], entry["dense_cutoff_blocks"])}
                          for entry in build.manifest["layers"]]
    manifest["tuning"] = report.as_json()
    del manifest["tuning"]["folder"]  # the folder may move; the table stays true
    write_plan(build.folder, program, manifest)
    open_build(build.folder)  # what was written verifies, or this raises


def _layer_calls(program: FrameProgram, candidate: TunableLayer) -> dict:
    """What to time for a layer: its tile segment at each batch to measure, its dense segment."""
    tiles = program.segments[candidate.tile_segment]
    calls = {k: SegmentCall(candidate.tile_segment, k) for k in batches_to_measure(tiles.max_batch)}
    calls["dense"] = SegmentCall(candidate.dense_segment, 1)
    return calls


def _tile_bytes(program: FrameProgram, layer_index: int) -> int:
    packed = program.tensors[program.layers[layer_index].tiles]
    return packed.nbytes // packed.shape[0]


def _largest_packed_bytes(program: FrameProgram, candidates: list[TunableLayer]) -> int:
    """The copy the estimate is measured with: the largest full batch of packed tiles."""
    return max(_tile_bytes(program, c.layer) * program.segments[c.tile_segment].max_batch for c in candidates)


def _layer_tuning(program: FrameProgram, candidate: TunableLayer, timings: Timings,
                  copy_ms_per_byte: float) -> LayerTuning:
    layer = program.layers[candidate.layer]
    tiles, dense = program.segments[candidate.tile_segment], program.segments[candidate.dense_segment]
    # the choice is made from the numbers as the manifest records them (LayerTuning.as_json's
    # rounding), so that the recorded table gives the recorded cut-off again, even where a
    # tile cost and the dense cost differ by less than the rounding
    medians = {key: round(ms, 5) for key, ms in timings.median_ms.items()}
    copy_ms = round(copy_ms_per_byte * _tile_bytes(program, candidate.layer), 6)
    tile_ms = {k: medians[k] for k in batches_to_measure(tiles.max_batch)}
    costs = tile_path_costs(interpolate_costs(tile_ms, tiles.max_batch), copy_ms)
    return LayerTuning(layer.name, LayerKind(layer.kind).name.lower(), layer.grid.num_blocks, tiles.max_batch,
                       layer.dense_cutoff, choose_cutoff(costs, medians["dense"]), tiles.name, dense.name, tile_ms,
                       medians["dense"], copy_ms, timings.spread)


def _machine() -> str:
    """Architecture and CPU model: a table measured on one CPU says little about another."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()} {model or platform.processor() or platform.system()}".strip()
