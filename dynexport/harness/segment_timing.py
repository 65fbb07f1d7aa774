"""Time the backend segments of a built folder on this machine, through ExecuTorch's Python
runtime (the methods of OUT/model.pte, run by the same XNNPACK kernels the C runtime calls).

Invariants:
- every timed call gets inputs with the plan's dims (NHWC physical; a tile segment's leading
  dim is the batch K, 1 <= K <= the segment's max_batch), built once before timing;
- timings are wall-clock medians over rounds, after warm-up rounds; each round runs every
  timed call once, in a fresh shuffled order, so a slow spell of a shared machine spreads over
  all calls instead of biasing some of them; garbage collection is paused while timing (a
  collection would land inside some call). How much the rounds disagree is reported with
  them (``Timings.spread``): on a busy machine preemption inflates short and long calls by
  different factors, and the caller should say so rather than trust the table;
- the ExecuTorch thread pool is set to ``threads`` while a MethodTimer is open and given back
  its previous size when it closes (the pool is process-wide).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import random
import statistics
import time
from typing import Callable, Hashable

import numpy as np
import torch

from dynexport.errors import PlanError
from dynexport.plan.frame_program import DType, FrameProgram, Segment


@dataclasses.dataclass
class Timings:
    median_ms: dict[Hashable, float]  # per timed call, the median of its rounds
    spread: float  # over calls, the median of (interquartile range of the rounds / their median)


@dataclasses.dataclass(frozen=True)
class TimedCall:
    """One method at one input size."""

    method: str
    inputs: tuple[torch.Tensor, ...]


def segment_inputs(program: FrameProgram, segment: Segment, batch: int = 1, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs for ``segment`` with the plan's dims; a tile segment's first input has
    leading dim ``batch``. 4-D inputs are NCHW views of NHWC memory (what the methods were
    exported with: channels_last), others plain."""
    generator = torch.Generator().manual_seed(seed)
    inputs = []
    for position, tensor_index in enumerate(program.segment_inputs(segment)):
        tensor = program.tensors[tensor_index]
        dims = list(tensor.shape)
        if segment.max_batch > 0 and position == 0:
            if not 1 <= batch <= segment.max_batch:
                raise ValueError(f"segment {segment.name}: batch {batch} outside 1..{segment.max_batch}")
            dims[0] = batch
        if tensor.dtype == DType.INT32:
            value = torch.zeros(dims, dtype=torch.int32)
        else:
            value = torch.randn(dims, generator=generator)
        inputs.append(value.permute(0, 3, 1, 2) if value.dim() == 4 else value)
    return tuple(inputs)


class MethodTimer:
    """Loaded methods of one .pte (``ExecuTorchSegments``) and the thread pool setting they
    are timed with."""

    def __init__(self, pte: bytes, threads: int = 1):
        from targets.executorch import ExecuTorchSegments

        # the pool is resized before any method is loaded: XNNPACK delegates bind to it at load
        self._previous_threads = _set_threads(threads)
        self.threads = threads
        self._segments = ExecuTorchSegments(pte)

    @property
    def method_names(self) -> set[str]:
        return self._segments.method_names

    def _method(self, name: str):
        if name not in self._segments.method_names:
            raise PlanError(f"model.pte has no method '{name}' (the plan names it): rebuild the folder")
        return self._segments.method(name)

    def time_calls(self, calls: dict[Hashable, TimedCall], rounds: int, warmup: int = 3, seed: int = 0,
                   progress: Callable[[int, int], None] | None = None) -> Timings:
        """Per key, the median wall time of one call in milliseconds over ``rounds`` rounds."""
        prepared = {key: (self._method(call.method), list(call.inputs)) for key, call in calls.items()}
        samples: dict[Hashable, list[float]] = {key: [] for key in calls}
        order, shuffle = list(calls), random.Random(seed).shuffle
        with _garbage_collection_paused():  # a collection inside a ~30 us call would be timed with it
            for round_index in range(warmup + rounds):
                shuffle(order)
                for key in order:
                    method, inputs = prepared[key]
                    start = time.perf_counter_ns()
                    method.execute(inputs)
                    elapsed = time.perf_counter_ns() - start
                    if round_index >= warmup:
                        samples[key].append(elapsed / 1e6)
                if progress is not None:
                    progress(round_index + 1, warmup + rounds)
        return Timings({key: statistics.median(values) for key, values in samples.items()},
                       statistics.median(_relative_spread(values) for values in samples.values()))

    def close(self) -> None:
        if self._previous_threads is not None:
            _set_threads(self._previous_threads)
            self._previous_threads = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@contextlib.contextmanager
def _garbage_collection_paused():
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _relative_spread(values: list[float]) -> float:
    if len(values) < 4:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4)
    return (q3 - q1) / statistics.median(values)


def _set_threads(threads: int) -> int | None:
    """Resize ExecuTorch's thread pool (XNNPACK runs on it); returns the previous size, or None
    when this ExecuTorch build has no pool control (then nothing changed)."""
    try:
        from executorch.extension.pybindings.portable_lib import (
            _threadpool_get_thread_count, _unsafe_reset_threadpool,
        )
    except ImportError:
        return None
    previous = int(_threadpool_get_thread_count())
    if threads > 0 and threads != previous:
        _unsafe_reset_threadpool(threads)  # "unsafe" only while a method runs; none does here
    return previous


def copy_ms_per_byte(nbytes: int, rounds: int = 21) -> float:
    """Milliseconds per byte of a plain memory copy of ``nbytes`` (median of ``rounds``): the
    estimate of what the runtime's gather spends per byte of packed tiles, which is an NHWC
    row-by-row memcpy (rows of tw * C floats)."""
    nbytes = max(int(nbytes), 1 << 16)  # below this, the timer's resolution dominates
    source = np.random.default_rng(0).standard_normal(nbytes // 4, dtype=np.float32)
    target = np.empty_like(source)
    times = []
    for _ in range(rounds + 2):
        start = time.perf_counter_ns()
        np.copyto(target, source)
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times[2:]) / 1e6 / source.nbytes
