"""Emit the frame program's segments as one ExecuTorch program with one method per segment.

Every segment is exported with channels_last example inputs (the plan's tensors are NHWC, so
XNNPACK converts no layout at the boundary). Tile segments get a bounded dynamic batch dim
1..max_batch and are exported with an example *at* the bound, which is what sizes the planned
memory (a smaller example under-sizes it).

Lowering costs seconds per method whatever its size, so segments are lowered in groups in
parallel worker processes and the programs merged (``merge_programs``).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch.export import Dim

from dynexport.errors import CompileError

PARALLEL_FROM = 6  # fewer segments than this lower in-process (a worker costs a torch import)


def export_segment(artifact) -> torch.export.ExportedProgram:
    """The segment as a torch.export program (tile segments: a bounded dynamic batch)."""
    dynamic_shapes = None
    if artifact.max_batch > 1:
        batch = Dim(f"tiles_{artifact.name}", min=1, max=artifact.max_batch)
        dynamic_shapes = ({0: batch},) + tuple(None for _ in artifact.example_inputs[1:])
    try:
        return torch.export.export(artifact.module, artifact.example_inputs,
                                   dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as exc:
        raise CompileError(f"segment {artifact.name}: torch.export failed: {exc}") from exc


def _cia_registrations():
    """What the dispatcher's CompositeImplicitAutograd ops depend on: their C++ registrations
    and the op namespaces Python has seen (about 2 ms to read)."""
    return (tuple(torch._C._dispatch_get_registrations_for_dispatch_key("CompositeImplicitAutograd")),
            tuple((name, len(getattr(torch.ops, name)._dir)) for name in torch.ops._dir
                  if isinstance(getattr(torch.ops, name), torch._ops._OpNamespace)))


@contextlib.contextmanager
def _cia_ops_memoized():
    """Every ``run_decompositions`` (2 per method here) first collects the preservable
    CompositeImplicitAutograd ops of every op namespace, re-materializing the C++ ops into
    ``torch.ops`` on the way: measured here, a quarter of the lowering time. The set only
    changes when an op is registered, so keep it while the registrations are the ones it was
    collected under."""
    import torch._export.utils as export_utils
    import torch.export.decomp_utils as decomp_utils
    import torch.export.exported_program as exported_program

    original_materialize, original_collect = export_utils._materialize_cpp_cia_ops, export_utils._collect_all_valid_cia_ops
    materialized: list = [None]
    collected: dict = {}

    def materialize_if_changed() -> None:
        current = torch._C._dispatch_get_registrations_for_dispatch_key("CompositeImplicitAutograd")
        if current != materialized[0]:
            original_materialize()
            materialized[0] = current

    def collect_if_changed():
        key = _cia_registrations()
        if key not in collected:
            collected.clear()
            collected[key] = original_collect()
        return set(collected[key])  # a copy, as every call of the original returns a new set

    export_utils._materialize_cpp_cia_ops = materialize_if_changed
    exported_program._collect_all_valid_cia_ops = collect_if_changed
    decomp_utils._collect_all_valid_cia_ops = collect_if_changed
    try:
        yield
    finally:
        export_utils._materialize_cpp_cia_ops = original_materialize
        exported_program._collect_all_valid_cia_ops = original_collect
        decomp_utils._collect_all_valid_cia_ops = original_collect


@contextlib.contextmanager
def _cached_callable_annotations():
    """``OperatorBase.py_impl`` builds two ``collections.abc.Callable[...]`` aliases for its
    inner function's annotations on every call (they are not cached), and each
    ``run_decompositions`` calls it some 6000 times (every preservable CIA op, every
    dispatch key): measured here, 30 % of torch's decomposition override. ``typing.Callable``
    is the same type for annotations and isinstance, and caches its subscriptions."""
    import typing

    import torch._ops as ops

    original = ops.Callable
    ops.Callable = typing.Callable
    try:
        yield
    finally:
        ops.Callable = original


STEPS_PER_SEGMENT = 3  # progress ticks of a method's lowering: decomposed, partitioned, checked


def segment_partitioner(tick: Callable[[], None] | None = None):
    """XNNPACK's partitioner, for segments: when a program has none of the ops XNNPACK asks to
    keep undecomposed (linear, upsampling and the like: our segments are convolutions and
    pointwise ops), it says it needs no per-node check, so ExecuTorch skips its
    EDGE_DO_NOT_DECOMP round (two more ``run_decompositions`` of the whole method, each a
    retrace, a third of the lowering time) that could only have preserved nodes of those ops.
    The programs lowered are byte for byte the same (tests/targets/test_executorch_emitter.py).
    ``tick`` is called as each method is decomposed, partitioned and checked (progress)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    asked = [None]

    class SegmentPartitioner(XnnpackPartitioner):
        def partition(self, exported_program):
            result = super().partition(exported_program)
            if tick is not None:
                tick()
            return result

        def ops_to_not_decompose(self, ep):
            # ExecuTorch asks (twice in a row) for each method before decomposing it, and again
            # after lowering: one tick per program asked about
            if tick is not None and id(ep) != asked[0]:
                asked[0] = id(ep)
                tick()
            ops, check_op_support = super().ops_to_not_decompose(ep)
            kept = set(ops)
            if any(node.op == "call_function" and node.target in kept for node in ep.graph.nodes):
                return ops, check_op_support
            return ops, None

    return SegmentPartitioner()


def build_xnnpack_patterns() -> None:
    """XNNPACK's delegate builds its SDPA and bilinear-upsampling pattern graphs (exported
    and lowered small modules, seconds) on first use and keeps them for the process: a
    worker builds them while it waits for its segments, not after."""
    from executorch.backends.xnnpack.partition.graphs import bilinear_2d, sdpa

    with _cia_ops_memoized(), _cached_callable_annotations():
        bilinear_2d.get_graphs_dict()
        sdpa.get_graphs()


def lower_segments(segments: dict, shortcuts: bool = True, tick: Callable[[], None] | None = None) -> bytes:
    """Export and lower a group of segments into one .pte (runs in a worker process too).
    ``shortcuts=False`` lowers along ExecuTorch's own path only: the test that the shortcuts
    (``_cia_ops_memoized``, ``_cached_callable_annotations``, ``segment_partitioner``) change
    no byte compares the two. ``tick``: called STEPS_PER_SEGMENT times per segment, as its
    lowering progresses."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass

    # Inputs and outputs outside the memory plan: the runtime binds its own NHWC state and
    # scratch buffers to them, so a segment call copies nothing in or out.
    io_in_place = ExecutorchBackendConfig(
        memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False, alloc_graph_output=False))

    with contextlib.ExitStack() as stack:
        if shortcuts:
            stack.enter_context(_cia_ops_memoized())
            stack.enter_context(_cached_callable_annotations())
        programs = {name: export_segment(artifact) for name, artifact in segments.items()}
        partitioner = segment_partitioner(tick) if shortcuts else XnnpackPartitioner()
        try:
            edge = to_edge_transform_and_lower(programs, partitioner=[partitioner])
            return bytes(edge.to_executorch(io_in_place).buffer)
        except Exception as exc:
            raise CompileError(
                f"ExecuTorch lowering failed for {', '.join(segments)}: {type(exc).__name__}: {exc}") from exc


class LoweringWorkers:
    """Worker processes that import torch and ExecuTorch (about 11 s here) *before* they are
    needed, so the import overlaps the compiler's own work; each lowers one group of
    segments. Fresh interpreters, not forks: forking a process that ran torch threads can
    hang, and multiprocessing's spawn would re-run the caller's main script. A worker writes
    one ``tick`` line to its stdout per lowering step (``STEPS_PER_SEGMENT`` per segment)."""

    def __init__(self, count: int):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # the workers fill the cores
        self._tmp = tempfile.TemporaryDirectory(prefix="dynexport-lower-")
        # stderr to files, not pipes: a worker's warnings must never block it
        self._logs = [open(Path(self._tmp.name) / f"worker{i}.log", "w+b") for i in range(count)]
        self._processes = [
            subprocess.Popen([sys.executable, "-m", "targets.executorch.lower_worker"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=log, env=env)
            for log in self._logs
        ]

    def __len__(self) -> int:
        return len(self._processes)

    def lower(self, groups: list[dict], in_process: dict | None = None,
              tick: Callable[[], None] | None = None) -> list[bytes]:
        """Lower each group in a worker and, meanwhile, ``in_process`` here; returns the
        programs, the in-process one first. ``tick`` is called (from reader threads too) per
        lowering step of any of them."""
        if len(groups) > len(self._processes):
            raise ValueError("more segment groups than workers")
        results = []
        for i, (process, group) in enumerate(zip(self._processes, groups)):
            request, result = Path(self._tmp.name) / f"group{i}.pkl", Path(self._tmp.name) / f"group{i}.pte"
            # our own segment modules, read back by our own worker; torch's pytree specs warn
            # about their own deprecations while pickled (nothing a user can act on)
            with open(request, "wb") as f, warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                pickle.dump(group, f)
            process.stdin.write(f"{request}\t{result}\n".encode())
            process.stdin.close()
            results.append(result)
        lock = threading.Lock()

        def locked_tick() -> None:
            if tick is not None:
                with lock:
                    tick()

        def read_ticks(stream) -> None:
            for line in stream:  # until the worker exits; anything but a tick is not ours
                if line == b"tick\n":
                    locked_tick()

        readers = [threading.Thread(target=read_ticks, args=(process.stdout,), daemon=True)
                   for process in self._processes[:len(groups)]]
        for reader in readers:
            reader.start()
        parts = [lower_segments(in_process, tick=locked_tick)] if in_process else []
        failures = []
        for process, result, log, reader in zip(self._processes, results, self._logs, readers):
            process.wait()
            reader.join()
            if process.returncode != 0:
                log.seek(0)
                failures.append((log.read().decode(errors="replace").strip().splitlines() or ["(no message)"])[-1])
            else:
                parts.append(result.read_bytes())
        if failures:
            raise CompileError("ExecuTorch lowering failed in a worker: " + "; ".join(failures))
        return parts

    def close(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in self._logs:
            log.close()
        self._tmp.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def lowering_cost(artifact) -> float:
    """Relative lowering time of a segment, from measurements here: a fixed cost per method
    plus a little per graph node."""
    graph = getattr(artifact.module, "graph", None)
    nodes = len(graph.nodes) if graph is not None else 1
    return 2.0 + 0.15 * nodes


def balance(segments: dict, jobs: int) -> list[dict]:
    """Split segments into ``jobs`` groups of about equal lowering time (greedy, largest first)."""
    loads = [0.0] * jobs
    groups: list[dict] = [{} for _ in range(jobs)]
    for name in sorted(segments, key=lambda n: -lowering_cost(segments[n])):
        target = loads.index(min(loads))
        groups[target][name] = segments[name]
        loads[target] += lowering_cost(segments[name])
    return groups


def workers_for(segment_count: int) -> int:
    """Worker processes to start for this many segments. All lowering happens in workers:
    this process then never imports ExecuTorch's compiler (~8 s) and the workers' imports
    overlap the compile (measured: 80 s -> see the build test for dstep_action)."""
    if segment_count < PARALLEL_FROM:
        return 0
    return max(1, min(segment_count // PARALLEL_FROM + 1, os.cpu_count() or 1))


def _convolutions(model) -> int:
    """Convolutions of an nn.Module, or conv and gate nodes of a .pt2's ExportedProgram."""
    if isinstance(model, torch.nn.Module):
        return sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    graph = getattr(model, "graph", None)
    if graph is None:
        return 0
    return sum(1 for node in graph.nodes if node.op == "call_function"
               and ("conv" in str(node.target) or "dynexport" in str(node.target)))


@contextlib.contextmanager
def lowering_workers(model):
    """The backend's ``prepare`` hook: for a model large enough to lower in parallel, start
    the worker processes before the model is compiled, so their imports overlap the compile.
    Yields the emitter's extra keyword arguments (``workers``, or nothing)."""
    count = workers_for(2 * _convolutions(model))  # about two segments per convolution
    if count == 0:
        yield {}
        return
    with LoweringWorkers(count) as workers:
        yield {"workers": workers}


def emit_executorch(segments: dict, progress: Callable[[str], None] | None = None,
                    workers: LoweringWorkers | None = None) -> bytes:
    """Segments (name -> SegmentArtifact) -> bytes of a .pte with one method per segment.
    ``workers`` (optional) are already started lowering processes to use."""
    from targets.executorch.merge_programs import merge_programs

    say = progress or (lambda message, *count: None)
    count = len(workers) if workers is not None else workers_for(len(segments))
    total, done = STEPS_PER_SEGMENT * len(segments), [0]

    def step(message: str) -> Callable[[], None]:
        def tick() -> None:
            done[0] = min(done[0] + 1, total)
            say(message, done[0], total)
        return tick

    if count == 0 or len(segments) < PARALLEL_FROM:
        message = f"lower {len(segments)} segments to XNNPACK"
        say(message, 0, total)
        return lower_segments(segments, tick=step(message))
    groups = [group for group in balance(segments, count) if group]
    message = f"lower {len(segments)} segments to XNNPACK in {len(groups)} processes"
    say(message, 0, total)
    with contextlib.ExitStack() as stack:
        if workers is None:
            workers = stack.enter_context(LoweringWorkers(count))
        parts = workers.lower(groups, tick=step(message))
    say("merge methods into one program")
    return merge_programs(parts)
