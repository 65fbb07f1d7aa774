"""Backend: what one backend folder under ``targets/`` declares about itself, in one place.

Invariant: a declaration is plain data (names, file names, ``"module:attribute"`` strings), so
reading the registry imports no backend library; the emitter, the preparation hook and the
host runner are imported only when a build, verify or bench uses them, after checking that
the backend's pip distributions are installed.
"""

from __future__ import annotations

import dataclasses
import importlib

from dynexport.errors import CompileError

PLATFORMS = ("android", "ios", "host")
ARTIFACT_KINDS = ("file", "directory")
NUMERICS = ("driver", "host_runner")


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str                      # "executorch": the plan's artifact name and the native driver's --backend
    artifact: str                  # file name in a build folder, "model.pte"
    emitter: str                   # "module:function": segments, progress=, **prepared -> artifact bytes
    prepare: str | None            # "module:function": model -> context manager started before compile,
                                   # yielding the emitter's extra keyword arguments
    native_sources: tuple[str, ...]  # repo-relative paths copied into OUT/runtime/
    platforms: tuple[str, ...]     # subset of PLATFORMS
    requires: tuple[str, ...]      # pip distributions it needs ("executorch",)
    host_runner: str | None        # "module:Class" of a Python host runner (artifact bytes, or the folder's
                                   # path for a directory artifact -> runner), if any
    default_on: tuple[str, ...] | None = None  # platforms where it is built without --backend;
                                   # None: all of ``platforms``, (): only when asked for
    artifact_kind: str = "file"    # "file": the emitter returns bytes; "directory": it returns
                                   # {relative path: bytes}, written as the folder ``artifact``
    build_options: tuple[str, ...] = ()  # build options passed to the emitter as keywords ("precision")
    structural_check: str | None = None  # "module:function": (artifact path, FrameProgram) -> list of
                                   # failures (empty: pass); verify runs it before any numerics
    numerics: str = "driver"       # how verify runs the artifact: "driver" (the native driver on
                                   # --device) or "host_runner" (the plan interpreter over host_runner,
                                   # on this machine, when the runner's ``unavailable()`` returns None)

    def is_default_on(self, platform: str) -> bool:
        return platform in (self.platforms if self.default_on is None else self.default_on)

    def __post_init__(self):
        unknown = [p for p in self.platforms if p not in PLATFORMS]
        if unknown:
            raise ValueError(f"backend {self.name}: unknown platforms {unknown}; expected a subset of {PLATFORMS}")
        if self.default_on is not None and not set(self.default_on) <= set(self.platforms):
            raise ValueError(f"backend {self.name}: default_on {self.default_on} must be a subset of its platforms "
                             f"{self.platforms}")
        if self.artifact_kind not in ARTIFACT_KINDS:
            raise ValueError(f"backend {self.name}: artifact_kind {self.artifact_kind!r}; expected one of {ARTIFACT_KINDS}")
        if self.numerics not in NUMERICS:
            raise ValueError(f"backend {self.name}: numerics {self.numerics!r}; expected one of {NUMERICS}")
        if self.numerics == "host_runner" and self.host_runner is None:
            raise ValueError(f"backend {self.name}: numerics 'host_runner' needs a host_runner")
        for field in ("emitter", "prepare", "host_runner", "structural_check"):
            spec = getattr(self, field)
            if spec is not None and spec.count(":") != 1:
                raise ValueError(f"backend {self.name}: {field} {spec!r} is not 'module:attribute'")

    def load_emitter(self):
        """The emitter callable (imports its module)."""
        return self._load(self.emitter)

    def load_prepare(self):
        """The preparation hook, or None when the backend has none."""
        return None if self.prepare is None else self._load(self.prepare)

    def load_host_runner(self):
        """The host runner class, or None when the backend has none."""
        return None if self.host_runner is None else self._load(self.host_runner)

    def load_structural_check(self):
        """The structural check callable, or None when the backend has none."""
        return None if self.structural_check is None else self._load(self.structural_check)

    def missing_requirements(self) -> tuple[str, ...]:
        """The pip distributions of ``requires`` that are not installed."""
        from importlib.metadata import PackageNotFoundError, version

        missing = []
        for distribution in self.requires:
            try:
                version(distribution)
            except PackageNotFoundError:
                missing.append(distribution)
        return tuple(missing)

    def _load(self, spec: str):
        missing = self.missing_requirements()
        if missing:
            raise CompileError(f"backend {self.name} needs {', '.join(missing)}, which is not installed; "
                               f"install it with: pip install {' '.join(missing)}")
        module, _, attribute = spec.partition(":")
        return getattr(importlib.import_module(module), attribute)


def directory_stream(files: dict[str, bytes]) -> bytes:
    """The bytes a directory artifact's record in the plan (size, CRC-32) is taken over: for
    each file in byte order of its relative POSIX path, the path (UTF-8), a NUL, its size as
    8 bytes little-endian and its contents. Paths are in it so that a renamed file changes the
    record too; verify recomputes it from the files the manifest lists."""
    parts = []
    for path in sorted(files, key=lambda p: p.encode()):
        data = files[path]
        parts += [path.encode(), b"\0", len(data).to_bytes(8, "little"), data]
    return b"".join(parts)
