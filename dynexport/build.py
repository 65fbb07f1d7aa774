"""``dynexport build``: model file -> output folder with the plan, backend artifacts, runtime
sources and a manifest.

The folder is written under a temporary name beside OUT and renamed at the end, so a failed
build leaves nothing half-written, and an existing OUT is replaced only with ``force``.
Backends, their artifact files and native sources come from the target registry
(``targets``): nothing here names a backend.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
import zlib
from pathlib import Path
from typing import Callable

from dynexport import __version__
from dynexport.app_bundle import write_app_bundle
from dynexport.errors import CompileError
from dynexport.plan.frame_program import Artifact
from targets import Backend, backends_for

PLAN_FILE = "plan.dxfp"
MANIFEST_FILE = "manifest.json"
# what an app needs to embed the runtime: the C core (dynrt), and each chosen backend's
# native_sources beside it, copied to OUT/runtime/ under the same relative paths so their
# CMake projects still find each other
# the core's whole CMake project (its driver and C tests included), so OUT/runtime configures
# and builds on its own, as the app wrappers' projects need it to
CORE_RUNTIME_SOURCES = ("dynexport/runtime/include", "dynexport/runtime/src", "dynexport/runtime/driver",
                        "dynexport/runtime/tests", "dynexport/runtime/CMakeLists.txt")
REFERENCE_DIR = "reference"
# State an android build may keep between frames: a phone gives one app a few hundred MiB
# (Android's large-heap class on mid-range phones is 256-512 MiB), and the app needs its own.
PHONE_STATE_BUDGET = 512 << 20


@dataclasses.dataclass
class BuildResult:
    out: Path
    manifest: dict
    seconds: float


def build(model_path, out, target: str = "android", backend: str | None = None, input_shape=None,
          force: bool = False, allow_pickle: bool = False, dense_cutoff: float | None = None,
          input_scale: float = 1.0 / 255.0, progress: Callable[..., None] | None = None,
          precision: str | None = None, dense_fallback: float | str | None = "auto",
          dense_fallback_hold: int = 0, change_driven: bool = True) -> BuildResult:
    """``dense_fallback``, ``dense_fallback_hold``, ``change_driven``: see ``compile_model``. ``progress`` is called with a message, and with (message, done, total) while a step
    that counts its work runs (the ExecuTorch lowering)."""
    from dynexport.compiler.frontend import parse_input_shape
    from dynexport.loading import load_model

    start = time.perf_counter()
    say = progress or (lambda message, *count: None)
    backends = backends_for(target, backend)
    options = _build_options(backends, precision=precision)
    emitters = {b.name: b.load_emitter() for b in backends}  # a missing backend library fails here, before any work
    out = Path(out)
    check_output_folder(out, Path(model_path), force)
    if isinstance(input_shape, str):
        input_shape = parse_input_shape(input_shape)

    if target == "android" and input_shape is not None:
        # cheap, before compiling: every gated layer keeps at least a frame-sized reference
        _check_phone_state(4 * _elements(input_shape), input_shape, "the input frame alone")
    say("load model")
    model = load_model(model_path, allow_pickle=allow_pickle)
    with contextlib.ExitStack() as stack:
        prepared = {b.name: {**stack.enter_context(_prepare(b, model)), **options.get(b.name, {})} for b in backends}
        reference = {"source": Path(model_path), "allow_pickle": allow_pickle, "build_options": options}
        return _build(model, out, target, backends, emitters, prepared, input_shape, dense_cutoff, input_scale, say,
                      start, reference, (dense_fallback, dense_fallback_hold), change_driven)


def _build(model, out, target, backends: tuple[Backend, ...], emitters, prepared, input_shape, dense_cutoff,
           input_scale, say, start, reference, dense_fallback=(None, 0), change_driven=True) -> BuildResult:
    from dynexport.compiler.pipeline import DEFAULT_DENSE_CUTOFF, compile_model

    if input_shape is None:
        recorded = getattr(model, "dynexport_input_shape", None)
        input_shape = tuple(recorded) if recorded is not None else None
    from dynexport.pruning.build_step import realize_pruning
    model, pruning = realize_pruning(model, input_shape, say)
    say("export and lower gates")
    compiled = compile_model(model, input_shape, DEFAULT_DENSE_CUTOFF if dense_cutoff is None else dense_cutoff,
                             *dense_fallback, change_driven=change_driven)
    if target == "android":  # before the artifacts, the slow part, are emitted
        _check_phone_state(compiled.program.state_bytes(), compiled.input_shape, "the state kept between frames")

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700: a build folder is as readable as any
    except OSError as exc:
        raise CompileError(f"cannot write the output folder '{out}': {exc.strerror or exc}") from None
    try:
        artifacts = {}
        versions = {"dynexport": __version__, "torch": _version("torch")}
        compiled.program.artifacts = []
        built, failed = [], {}
        for chosen in backends:
            name = chosen.name
            try:
                data = emitters[name](compiled.segments, progress=lambda step, *count, name=name: say(f"{name}: {step}", *count),
                                      **prepared[name])
            except CompileError as exc:
                # one backend's converter refusing a segment must not cost the others: record
                # it and go on; a build where none succeeded fails below with every reason
                if len(backends) == 1:
                    raise
                failed[name] = str(exc)
                say(f"{name}: not built: {exc}")
                continue
            built.append(chosen)
            data = _write_artifact(staging, chosen, data, artifacts)
            versions.update({distribution: _version(distribution) for distribution in chosen.requires})
            # the plan names the artifact it was built with: a runtime refuses any other
            compiled.program.artifacts.append(Artifact(name, len(data), zlib.crc32(data)))
        if not built:
            raise CompileError("no backend could be built: " + "; ".join(f"{n}: {r}" for n, r in failed.items()))
        plan_bytes = compiled.program.to_bytes()
        (staging / PLAN_FILE).write_bytes(plan_bytes)
        artifacts[PLAN_FILE] = _sha256(plan_bytes)
        _copy_runtime_sources(staging, runtime_sources(tuple(built)))
        # the PyTorch reference travels with the build: verify and bench compare against it
        reference_file = f"{REFERENCE_DIR}/model{reference['source'].suffix or '.pt'}"
        (staging / REFERENCE_DIR).mkdir()
        shutil.copyfile(reference["source"], staging / reference_file)
        artifacts[reference_file] = _sha256((staging / reference_file).read_bytes())
        manifest = make_manifest(compiled, target, [b.name for b in built], versions, artifacts, input_scale,
                                 time.perf_counter() - start)
        if failed:  # the backends asked for that were not built, and why (their converters' words)
            manifest["failed_backends"] = failed
        # information only: verify, bench and tune take trust from their own --allow-pickle, never from here
        manifest["pruning"] = pruning
        options = reference.get("build_options", {})
        if any(options.values()):  # what the artifacts were built with: verify's structural checks read it
            manifest["build_options"] = {name: dict(chosen) for name, chosen in options.items() if chosen}
        manifest["reference"] = {"file": reference_file, "built_with_allow_pickle": reference["allow_pickle"]}
        if compiled.change_driven:  # the plan gates these at threshold 0: the reference must too
            manifest["reference"]["change_driven"] = list(compiled.change_driven)
        write_app_bundle(staging, target, built, manifest)  # the target's wrapper + INTEGRATION.md, if it has one
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        say("finish")
        _replace(staging, out)
    except OSError as exc:  # a full disk or a folder that became read-only while compiling
        shutil.rmtree(staging, ignore_errors=True)
        raise CompileError(f"cannot write the output folder '{out}': {exc.strerror or exc}"
                           f"{f' ({exc.filename})' if exc.filename else ''}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return BuildResult(out, manifest, time.perf_counter() - start)


# build options a backend may accept (Backend.build_options), their values, the default first
BUILD_OPTIONS = {"precision": ("fp32", "fp16")}


def _build_options(backends: tuple[Backend, ...], **given) -> dict[str, dict]:
    """backend name -> the build options it accepts that were given; an option no chosen
    backend accepts, or a value not allowed, is refused naming who takes it."""
    chosen: dict[str, dict] = {b.name: {} for b in backends}
    for option, value in given.items():
        if value is None:
            continue
        allowed = BUILD_OPTIONS[option]
        if value not in allowed:
            raise CompileError(f"--{option} {value!r}: expected one of {', '.join(allowed)}")
        takers = [b.name for b in backends if option in b.build_options]
        if not takers:
            from targets import BACKENDS

            accepting = [b.name for b in BACKENDS.values() if option in b.build_options]
            raise CompileError(f"--{option} {value}: none of the backends built ({', '.join(chosen)}) takes it; "
                               f"it applies to {', '.join(accepting) or 'no registered backend'}")
        for name in takers:
            chosen[name][option] = value
    return chosen


def _write_artifact(staging: Path, backend: Backend, data, artifacts: dict) -> bytes:
    """Write what the emitter returned as ``backend.artifact``: a file (bytes), or a directory
    ({relative POSIX path: bytes}) whose every file gets its own manifest entry
    ``<artifact>/<path>``. Returns the bytes the plan's artifact record is taken over (the
    file, or ``directory_stream`` of the directory)."""
    from targets.backend import directory_stream

    if backend.artifact_kind == "file":
        if not isinstance(data, (bytes, bytearray)):
            raise CompileError(f"backend {backend.name}: its emitter returned {type(data).__name__}, expected bytes")
        (staging / backend.artifact).write_bytes(data)
        artifacts[backend.artifact] = _sha256(data)
        return bytes(data)
    if not isinstance(data, dict) or not data:
        raise CompileError(f"backend {backend.name}: its emitter returned {type(data).__name__}, expected a non-empty "
                           f"{{relative path: bytes}} for the directory {backend.artifact}")
    root = staging / backend.artifact
    for relative, content in sorted(data.items()):
        parts = Path(relative).parts
        if not parts or Path(relative).is_absolute() or ".." in parts or "\\" in relative:
            raise CompileError(f"backend {backend.name}: file {relative!r} of {backend.artifact} is not a relative path")
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(content)
        artifacts[f"{backend.artifact}/{relative}"] = _sha256(content)
    return directory_stream(data)


def _prepare(backend: Backend, model):
    """The backend's ``prepare`` context (e.g. lowering processes started so their imports
    overlap the compile), yielding the emitter's extra keyword arguments; ``{}`` without one."""
    prepare = backend.load_prepare()
    return prepare(model) if prepare is not None else contextlib.nullcontext({})


def runtime_sources(backends: tuple[Backend, ...]) -> tuple[str, ...]:
    """Repo-relative paths copied to OUT/runtime/: the core, then each backend's adapter."""
    extra = [path for b in backends for path in b.native_sources if path not in CORE_RUNTIME_SOURCES]
    return CORE_RUNTIME_SOURCES + tuple(dict.fromkeys(extra))


def _elements(shape) -> int:
    count = 1
    for d in shape:
        count *= int(d)
    return count


def _check_phone_state(nbytes: int, input_shape, what: str) -> None:
    if nbytes > PHONE_STATE_BUDGET:
        shape = "x".join(str(int(d)) for d in input_shape)
        raise CompileError(f"--input-shape {shape}: {what} needs {nbytes / 2**20:,.0f} MiB, more than an Android "
                           f"phone gives one app ({PHONE_STATE_BUDGET >> 20} MiB for dynexport's state): use a smaller "
                           f"--input-shape (e.g. 1x3x512x512), or --target host")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def is_build_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a dynexport build: its manifest says so."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and str(manifest.get("format", "")).startswith("dynexport-build/")


def check_output_folder(out: Path, model_path: Path, force: bool) -> None:
    """Before anything is compiled: OUT can be written, and ``force`` replaces only a folder
    that is a dynexport build, never the folder holding the model, ``.`` or a parent of the
    current folder. Raises ``CompileError`` naming the folder."""
    if out.exists() or out.is_symlink():
        if not force:
            raise CompileError(f"output folder '{out}' exists; pass --force to replace it")
        resolved, cwd = out.resolve(), Path.cwd().resolve()
        if not out.is_dir():
            raise CompileError(f"--output '{out}' is a file, not a build folder: --force replaces only a folder "
                               f"written by dynexport build; choose another -o")
        if resolved == cwd or resolved in cwd.parents:
            raise CompileError(f"--output '{out}' is the current folder or a parent of it: --force will not replace "
                               f"it; choose a new folder with -o")
        if resolved == model_path.resolve().parent or resolved in model_path.resolve().parents:
            raise CompileError(f"--output '{out}' holds the model '{model_path}': --force will not replace it; "
                               f"choose a new folder with -o")
        if not is_build_folder(out):
            raise CompileError(f"--output '{out}' exists and is not a dynexport build (no manifest.json saying "
                               f"\"format\": \"dynexport-build/...\"): --force replaces only a build folder, so "
                               f"nothing of yours is deleted; choose another -o or remove it yourself")
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise CompileError(f"--output '{out}': '{ancestor}' is a file, not a folder")
    try:  # really writing, not os.access: root passes access() on read-only and virtual file systems
        os.rmdir(tempfile.mkdtemp(prefix=".dynexport-probe-", dir=ancestor))
    except OSError as exc:
        raise CompileError(f"--output '{out}': cannot write in '{ancestor}' ({exc.strerror or exc}); "
                           f"choose another -o") from None


def _replace(staging: Path, out: Path) -> None:
    if out.exists():
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, trash / out.name)
        os.replace(staging, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, out)


def _copy_runtime_sources(staging: Path, sources: tuple[str, ...]) -> None:
    for relative in sources:
        copy_installed(relative, staging / "runtime" / relative)


# what a source folder may hold that is no source: build trees (CMake, Gradle, the NDK's .cxx)
_NOT_SOURCES = shutil.ignore_patterns("build*", ".gradle", ".cxx", "__pycache__")


def copy_installed(relative: str, target: Path) -> None:
    """Copy the installation's file or folder ``relative`` (repo-relative) to ``target``: the
    runtime sources and the app wrappers a build folder carries."""
    source = Path(__file__).resolve().parent.parent / relative
    if source.is_dir():
        shutil.copytree(source, target, ignore=_NOT_SOURCES, dirs_exist_ok=True)
    elif source.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    else:
        # a registry entry naming a file that is not there is a packaging defect: an app
        # would get a folder that does not build, so say so instead of skipping it
        raise CompileError(f"runtime source '{relative}' is missing from the dynexport installation "
                           f"({source}); reinstall dynexport from its source tree")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def _dense_fallback_entry(program) -> dict | None:
    """The plan's dense fallback, as build prints it (the plan is what verify and bench follow)."""
    fallback = program.dense_fallback()
    if fallback is None:
        return None
    layer, count, hold, _hold_skips_gate = fallback
    return {"layer": program.layers[layer].name, "count": count, "blocks": program.layers[layer].grid.num_blocks,
            "hold": hold}


def make_manifest(compiled, target, backends, versions, artifacts, input_scale, seconds) -> dict:
    from dynexport.plan.frame_program import LayerKind, Role

    program = compiled.program
    layers = []
    for layer, dense_macs in zip(program.layers, compiled.layer_dense_macs):
        grid = layer.grid
        layers.append({
            "name": layer.name,
            "kind": LayerKind(layer.kind).name.lower(),
            "input_size": list(grid.input_size),
            "output_size": list(grid.output_size),
            "block": grid.block,
            "blocks": list(grid.blocks),
            "tile": list(grid.tile_size),
            "dense_macs": int(dense_macs),
            "dense_cutoff_blocks": layer.dense_cutoff,
            "realized_savings": "blocks" if layer.kind == LayerKind.SKIP_CONV else "patches (channel skip/reuse computed, not yet saved)",
        })
    state = [t for t in program.tensors if t.role == Role.STATE]
    return {
        "format": "dynexport-build/1",
        "target": target,
        "backends": list(backends),
        "versions": versions,
        "input": {"shape": list(compiled.input_shape), "dtype": "float32", "layout": "NCHW",
                  "plan_layout": "NHWC", "normalization": {"scale": input_scale, "offset": 0.0,
                                                            "note": "float = uint8 * scale + offset"}},
        "output": {"shape": list(compiled.output_shape), "dtype": "float32"},
        "state_bytes": sum(t.nbytes for t in state),
        "plan": {"file": PLAN_FILE, "segments": len(program.segments), "instructions": len(program.instructions),
                 "tensors": len(program.tensors), "dense_fallback": _dense_fallback_entry(program)},
        "layers": layers,
        "artifacts": artifacts,
        "build_seconds": round(seconds, 2),
    }
