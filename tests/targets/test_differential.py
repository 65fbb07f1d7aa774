"""One differential suite over every registered backend (targets/__init__.py): each backend's
artifact, built by ``dynexport build`` for each small model of backend_models.py, runs a clip
with a scene cut through

- the native runtime (the C core and the backend's adapter, through the driver, at 1 and 2
  threads),
- the Python plan interpreter (dynexport/plan/interpreter.py) over the backend's host runner
  on the same artifact,
- and the PyTorch reference (dynexport.harness.reference),

and every pair agrees frame by frame at verify's tolerances (dynexport/harness/verify.py:
``compare_runs``, RELATIVE_TOLERANCE of the output range, the drift rule) with every gate
decision equal. The same builds also check: threads do not change the outputs, sessions
sharing one backend object give a lone session's outputs, each segment matches torch in the
host runner at several tile batches, and ARM64 under qemu matches the host.

What cannot run here is skipped with the reason verify gives, never passed: Core ML (numerics
"host_runner", no adapter in the Linux driver) gets its structural check, and its numerics
are "not run (needs macOS)" off macOS. A backend registered later is in every case without
an edit here. Backend-specific checks (damaged artifacts, signatures, library loading, tile
counts over the bound) stay in each backend's own test file, on the same builds.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from dynexport.harness.clips import synthetic_clip
from dynexport.harness.devices import driver_command
from dynexport.harness.reference import COMPUTE, run_reference
from dynexport.harness.verify import (
    RELATIVE_TOLERANCE, compare_runs, load_reference, open_build, run_interpreted, run_native, structural_failures,
    verify_backend,
)
from dynexport.plan.frame_program import LayerKind
from targets import BACKENDS
from tests.targets.backend_models import INPUT_SHAPE, MODELS
from tests.targets.conftest import FRAMES, RESET_AT

THREADS = (1, 2)
THREADS_TOLERANCE = 1e-5  # absolute: the same kernels on a different split of the work
STRUCTURAL = [name for name, b in BACKENDS.items() if b.structural_check is not None]


def driver_numerics(backend: str):
    """Skip (with the reason) a backend whose numerics the native driver does not run."""
    declared = BACKENDS[backend]
    if declared.numerics != "driver":
        pytest.skip(f"{backend}: no adapter in the native driver (numerics {declared.numerics!r}: verify runs it "
                    f"through the plan interpreter over {declared.host_runner.rsplit(':', 1)[1]})")


class Runs:
    """The runs of one (model, backend) build, each made once per session on first use."""

    def __init__(self, built):
        self.built = built
        self.build = open_build(built.out)
        self.clip = synthetic_clip("mixed", self.build.manifest, FRAMES, resets=(RESET_AT,))
        self._native: dict[int, object] = {}
        self._interpreted = None
        self._reference = None

    @property
    def reference(self):
        if self._reference is None:
            model = load_reference(self.build, allow_pickle=True)
            self._reference = run_reference(model, self.build.program, self.clip.frames, self.clip.resets)
        return self._reference

    def native(self, threads: int):
        if threads not in self._native:
            self._native[threads] = run_native(self.build, self.built.backend, self.clip, "host", self.reference,
                                               ["--threads", str(threads)])
        return self._native[threads]

    def host_runner(self):
        """The backend's host runner on this build's artifact; skips with its reason when it cannot run here."""
        declared = BACKENDS[self.built.backend]
        runner = declared.load_host_runner()
        if runner is None:
            pytest.skip(f"{self.built.backend} has no host runner")
        reason = runner.unavailable() if hasattr(runner, "unavailable") else None
        if reason is not None:
            pytest.skip(f"{self.built.backend}: {runner.__name__} cannot run here ({reason})")
        artifact = self.built.artifact
        return runner(artifact.read_bytes() if declared.artifact_kind == "file" else artifact)

    def interpreted(self):
        if self._interpreted is None:
            self._interpreted = run_interpreted(self.build, self.host_runner(), self.clip)
        return self._interpreted


RUNS: dict[tuple[str, str], Runs] = {}


def runs_of(backend_build, model: str, backend: str) -> Runs:
    if (model, backend) not in RUNS:
        RUNS[model, backend] = Runs(backend_build(model, backend))
    return RUNS[model, backend]


@pytest.fixture
def runs(backend_build, model, backend) -> Runs:
    return runs_of(backend_build, model, backend)


def agree(what: str, expected, got, backend: str):
    """verify's comparison of ``got`` against ``expected``: no failure, every gate equal."""
    report = compare_runs(backend, "host", expected, got)
    assert report.failures == [], f"{backend}, {what}: {report.failures}"
    assert report.gate_agreement == 1.0 and report.max_rel_err <= RELATIVE_TOLERANCE, (what, report)
    return report


parametrize_models = pytest.mark.parametrize("model", list(MODELS))
parametrize_backends = pytest.mark.parametrize("backend", list(BACKENDS))


@parametrize_models
@pytest.mark.parametrize("backend", STRUCTURAL)
def test_the_artifact_passes_its_structural_check(runs, backend, model):
    assert structural_failures(runs.build, backend) == []


@parametrize_models
@parametrize_backends
@pytest.mark.parametrize("threads", THREADS)
def test_native_run_matches_the_interpreter_and_the_reference(runs, backend, model, threads):
    if BACKENDS[backend].numerics != "driver":
        # what verify reports for it here: a pass only where its numerics ran (macOS, for Core ML)
        report = verify_backend(runs.build, backend, runs.clip, "host", runs.reference, lambda message: None)
        assert report.status != "fail", report.failures
        if report.status == "not run":
            assert not report.passed and report.summary().endswith(f"numerics: not run ({report.not_run})")
            pytest.skip(f"{backend}: {report.summary()}")
    driver_numerics(backend)
    native = runs.native(threads)
    agree("native vs reference", runs.reference, native, backend)
    agree("native vs interpreter", runs.interpreted(), native, backend)

    program = runs.build.program
    paths = [[layer["path"] for layer in frame["layers"]] for frame in native.stats]
    assert len(paths) == FRAMES and all(len(p) == len(program.layers) and set(p) <= {"reuse", "tiles", "dense"}
                                        for p in paths), paths
    assert paths[0] == paths[RESET_AT] == ["dense"] * len(program.layers), paths  # after a reset: no history
    if any(layer.kind == LayerKind.SKIP_CONV for layer in program.layers):  # the tile path, at a batch below its bound
        assert any("tiles" in p for p in paths), f"no frame took the tile path: {paths}"
    assert all(len(frame["segment_ns"]) == len(program.segments) for frame in native.stats)


@parametrize_models
@parametrize_backends
def test_the_interpreter_over_the_host_runner_matches_the_reference(runs, backend, model):
    agree("interpreter vs reference", runs.reference, runs.interpreted(), backend)


@parametrize_models
def test_the_models_gates_decide_something(backend_build, model):
    """Each model exercises its gates on the clip: some blocks skipped, and a D-STEP layer
    skipping or reusing some channel, so agreeing on decisions means something."""
    backend = next(name for name, b in BACKENDS.items() if b.numerics == "driver")  # any build has the program
    runs = runs_of(backend_build, model, backend)
    reference = runs.reference
    assert reference.block_masks[1:].mean() < 1.0, "no block skipped after the first frame"
    if any(layer.kind == LayerKind.DSTEP for layer in runs.build.program.layers):
        assert (reference.channels[1:] != COMPUTE).any(), "no D-STEP channel skipped or reused"


@parametrize_models
@parametrize_backends
def test_threads_do_not_change_the_outputs_or_decisions(runs, backend, model):
    driver_numerics(backend)
    one, two = runs.native(1), runs.native(2)
    np.testing.assert_allclose(two.outputs, one.outputs, atol=THREADS_TOLERANCE, rtol=0)
    assert np.array_equal(one.block_masks, two.block_masks) and np.array_equal(one.channels, two.channels)


def drive(built, tmp_path, extra=()):
    """The host driver on the build's plan, artifact and frames (no resets); outputs to tmp_path."""
    command = [*driver_command("host"), "--backend", built.backend, "--plan", str(built.plan), "--artifact",
               str(built.artifact), "--frames", str(built.frames), "--outputs", str(tmp_path / "outputs.bin"),
               *map(str, extra)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), np.fromfile(tmp_path / "outputs.bin", np.float32)


@parametrize_models
@parametrize_backends
def test_sessions_sharing_one_backend_give_a_lone_sessions_outputs(runs, backend, model, tmp_path):
    """2 and 3 sessions on one backend object, created and destroyed in every order, each
    stepping its own clip: every output is a lone session's (the driver's check fails on the
    first difference or failed step)."""
    driver_numerics(backend)
    summary, lone = drive(runs.built, tmp_path, ["--shared-sessions-check", "--threads", 1])
    check = summary["shared_sessions_check"]
    assert check == {"schedules": 2 * 2 + 6 * 6, "steps": check["steps"], "differences": 0}
    assert check["steps"] >= 40 * 2 * 4
    # clip 0's lone outputs are a plain run's
    plain, stepped = drive(runs.built, tmp_path, ["--threads", 1])
    assert plain["frames"] == FRAMES
    np.testing.assert_array_equal(lone, np.concatenate([stepped, stepped])[:lone.size])


@pytest.mark.parametrize("model", ["mixed"])
@parametrize_backends
def test_every_segment_matches_torch_in_the_host_runner(runs, backend, compiled, model):
    """Segment by segment (every kind: tiles, dense, D-STEP policies), a tile segment at
    batch 1, half its bound and its bound (the dynamic batch)."""
    runner = runs.host_runner()
    assert set(runner.method_names) == set(compiled.segments)
    assert {"tiles", "dense"} <= {a.kind.value for a in compiled.segments.values()}
    for name, artifact in compiled.segments.items():
        batches = sorted({1, max(1, artifact.max_batch // 2), artifact.max_batch}) if artifact.max_batch > 1 else [None]
        for batch in batches:
            # a D-STEP policy's `primed` flag is exactly 0 or 1 at run time (a converted form may rely on it)
            inputs = [torch.ones_like(x) if x.shape == (1,) else x for x in artifact.example_inputs]
            if batch is not None:
                inputs[0] = inputs[0][:batch]
            with torch.no_grad():
                expected = artifact.module(*inputs)
            expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
            got = runner.run(name, inputs)
            assert len(got) == len(expected), name
            for g, e in zip(got, expected):
                assert g.shape == e.shape and g.dtype == e.dtype, (name, batch, g.shape, e.shape, g.dtype, e.dtype)
                error = (g.double() - e.double()).abs().max().item() if e.numel() else 0.0
                assert error <= 1e-5, f"{backend} segment {name} at batch {batch}: max abs error {error}"


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mixed"])
@parametrize_backends
def test_aarch64_driver_under_qemu_matches_host(runs, backend, aarch64_driver, tmp_path, model):
    """Two frames (dense, then the tile or reuse path: emulation is ~400x slower) on ARM64 under
    qemu against the host, both at one thread."""
    driver_numerics(backend)
    if backend not in subprocess.run([*aarch64_driver, "--help"], capture_output=True, text=True).stdout:
        pytest.fail(f"the aarch64 driver has no {backend} adapter (tools/build_runtime.sh aarch64 found no wheel)")
    built = runs.built
    frames = tmp_path / "frames.bin"
    frames.write_bytes(built.frames.read_bytes()[:2 * 4 * int(np.prod(INPUT_SHAPE))])
    common = ["--backend", backend, "--plan", str(built.plan), "--artifact", str(built.artifact),
              "--frames", str(frames), "--threads", "1"]
    host = subprocess.run([*driver_command("host"), *common, "--outputs", str(tmp_path / "host.bin")],
                          capture_output=True, text=True)
    assert host.returncode == 0, host.stderr
    arm = subprocess.run([*aarch64_driver, *common, "--outputs", str(tmp_path / "arm.bin")], capture_output=True,
                         text=True, timeout=900)
    assert arm.returncode == 0, arm.stderr
    got, expected = np.fromfile(tmp_path / "arm.bin", np.float32), np.fromfile(tmp_path / "host.bin", np.float32)
    assert got.shape == expected.shape and np.abs(got - expected).max() <= RELATIVE_TOLERANCE
