"""The target registry: every backend dynexport can build for, and which run on each platform.

A backend is a folder ``targets/<name>/`` whose ``__init__.py`` declares ``BACKEND =
Backend(...)`` (``targets/backend.py``); adding one is that folder and one line in
``BACKEND_FOLDERS``. ``build``, ``verify``, ``bench`` and ``tune`` find backends here and
name none themselves. A *target* (``--target``) is a platform; its default backends are the
registered backends that run on it and are a default there (``Backend.default_on``; a
backend that is not, such as onnxruntime, is built only with ``--backend``).

Invariant: importing this module imports no backend library (torch, executorch, ...): the
declarations are plain data, so ``dynexport --help`` stays instant.
"""

from __future__ import annotations

import importlib

from dynexport.errors import CompileError
from targets.backend import PLATFORMS, Backend

BACKEND_FOLDERS = (
    "targets.executorch",
    "targets.onnxruntime",
    "targets.litert",
    "targets.coreml",
)


def _registered(folders: tuple[str, ...]) -> dict[str, Backend]:
    backends: dict[str, Backend] = {}
    for folder in folders:
        declared = importlib.import_module(folder).BACKEND
        for other in backends.values():
            if declared.name == other.name or declared.artifact == other.artifact:
                raise ValueError(f"{folder}: backend {declared.name} ({declared.artifact}) clashes with "
                                 f"{other.name} ({other.artifact}): names and artifact files must be unique")
        backends[declared.name] = declared
    return backends


BACKENDS: dict[str, Backend] = _registered(BACKEND_FOLDERS)


def _targets(backends: dict[str, Backend]) -> dict[str, tuple[str, ...]]:
    """platform -> the backends that run on it (a default or not)."""
    return {platform: names for platform in PLATFORMS
            if (names := tuple(b.name for b in backends.values() if platform in b.platforms))}


def _defaults(backends: dict[str, Backend]) -> dict[str, tuple[str, ...]]:
    return {platform: names for platform in PLATFORMS
            if (names := tuple(b.name for b in backends.values() if b.is_default_on(platform)))}


# platform -> its default backends; derived from BACKENDS when this module is imported
TARGETS: dict[str, tuple[str, ...]] = _defaults(BACKENDS)


def backend(name: str) -> Backend:
    """The registered backend ``name``."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise CompileError(f"unknown backend {name!r}; registered backends: {', '.join(BACKENDS) or 'none'}") from None


def backends_for(target: str, requested: str | None = None) -> tuple[Backend, ...]:
    """The backends to build for platform ``target``: ``requested`` alone when given (it must
    run there), otherwise every registered backend that is a default there. Read from BACKENDS at each
    call, so a backend registered later is found too."""
    available = _targets(BACKENDS)
    if target not in PLATFORMS:
        raise CompileError(f"--target {target!r}: expected one of {', '.join(p for p in PLATFORMS if p in available)}")
    if target not in available:
        raise CompileError(f"--target {target}: no registered backend runs on {target} yet; "
                           f"targets with a backend: {', '.join(available) or 'none'}")
    if requested is None:
        defaults = _defaults(BACKENDS).get(target)
        if not defaults:
            raise CompileError(f"--target {target}: no backend is built there by default; choose one with --backend "
                               f"(available for {target}: {', '.join(available[target])})")
        return tuple(BACKENDS[name] for name in defaults)
    chosen = backend(requested)
    if target not in chosen.platforms:
        raise CompileError(f"--backend {requested!r} is not available for target {target} "
                           f"(it runs on {', '.join(chosen.platforms)}); available for {target}: "
                           f"{', '.join(available[target])}")
    return (chosen,)


__all__ = ["BACKENDS", "BACKEND_FOLDERS", "PLATFORMS", "TARGETS", "Backend", "backend", "backends_for"]
