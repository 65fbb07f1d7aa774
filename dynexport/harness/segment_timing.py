"""Time the backend segments of a built folder on a device, through the native driver's tune
mode (``dynrt_driver --tune-segments``: the same runtime, backend and kernels a deployed
session uses, on ``host``, ``qemu-arm64`` or ``adb``).

Invariants:
- every timed call runs a segment of the plan on the session's own buffers, which hold the
  activations of a frame stepped first; a tile segment runs at batch K, 1 <= K <= its
  max_batch (the runtime refuses anything else);
- timings are wall-clock medians over rounds, after warm-up rounds; each round runs every
  call of a group once, in a fresh shuffled order, so a slow spell of a shared machine
  spreads over all calls instead of biasing some of them. How much the rounds disagree is
  reported with them (``Timings.spread``): on a busy machine preemption inflates short and
  long calls by different factors, and the caller should say so rather than trust the table;
- the copy estimate (what gathering a byte of tiles costs) is measured by the same driver on
  the same device: a plain memcpy, the way the runtime's gather copies NHWC rows.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import tempfile
from pathlib import Path
from typing import Hashable

import numpy as np

from dynexport.errors import DynexportError
from dynexport.plan.frame_program import FrameProgram


@dataclasses.dataclass
class Timings:
    median_ms: dict[Hashable, float]  # per timed call, the median of its rounds
    spread: float  # over calls, the median of (interquartile range of the rounds / their median)


@dataclasses.dataclass(frozen=True)
class SegmentCall:
    """One segment (plan index) at one batch."""

    segment: int
    batch: int = 1


@dataclasses.dataclass
class DeviceTimings:
    groups: list[Timings]  # per group of calls, in the order asked
    copy_ms_per_byte: float  # a plain memory copy on the device, per byte
    threads: int  # what the backend's segments ran with


def time_segments(plan: Path, artifact: Path, program: FrameProgram, groups: list[dict[Hashable, SegmentCall]],
                  backend: str, device: str = "host", threads: int = 1, rounds: int = 25, warmup: int = 3,
                  copy_bytes: int = 0, seed: int = 0, timeout: float | None = None) -> DeviceTimings:
    """Per group, the median wall time in milliseconds of each call over ``rounds`` rounds;
    one driver run for all groups (the artifact is loaded once)."""
    from dynexport.harness.devices import run_driver

    calls = [list(group.items()) for group in groups]
    spec = "/".join(",".join(f"{call.segment}:{call.batch}" for _, call in group) for group in calls)
    with tempfile.TemporaryDirectory(prefix="dynexport-tune-") as tmp:
        frames = Path(tmp) / "frames.bin"
        shape = program.tensors[program.inputs[0]].shape  # physical (NHWC for 4-D)
        np.random.default_rng(seed).random(shape, dtype=np.float32).tofile(frames)
        stdout = run_driver(device, {"plan": plan, "artifact": artifact, "frames": frames},
                            ["--tune-segments", spec, "--rounds", str(rounds), "--warmup", str(warmup),
                             "--seed", str(seed), "--threads", str(threads), "--copy-bytes", str(copy_bytes)],
                            timeout, backend=backend)
    try:
        result = json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise DynexportError(f"the native driver on {device} printed no tune result: {stdout[-300:]!r}") from None
    timings = []
    for group, measured in zip(calls, result["tune"]):
        samples = {key: [ns / 1e6 for ns in entry["ns"]] for (key, _), entry in zip(group, measured)}
        timings.append(Timings({key: statistics.median(values) for key, values in samples.items()},
                               statistics.median(_relative_spread(values) for values in samples.values())))
    copy_ms = statistics.median(result["copy_ns"]) / 1e6 / result["copy_bytes"] if result["copy_bytes"] else 0.0
    return DeviceTimings(timings, copy_ms, int(result["threads"]))


def _relative_spread(values: list[float]) -> float:
    if len(values) < 4:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4)
    median = statistics.median(values)
    return (q3 - q1) / median if median > 0 else 0.0
