"""ExecuTorch backend: one multi-method .pte (XNNPACK-delegated), one method per segment.

Importing this package imports neither torch nor ExecuTorch: it only declares the backend.
``emit_executorch`` and ``ExecuTorchSegments`` are still importable from here; they load
their modules on first use.
"""

from targets.backend import Backend

BACKEND = Backend(
    name="executorch",
    artifact="model.pte",
    emitter="targets.executorch.emitter:emit_executorch",
    prepare="targets.executorch.emitter:lowering_workers",
    native_sources=("targets/executorch/native",),
    platforms=("android", "ios", "host"),
    requires=("executorch",),
    host_runner="targets.executorch.host_runtime:ExecuTorchSegments",
)

_LAZY = {"emit_executorch": "targets.executorch.emitter", "ExecuTorchSegments": "targets.executorch.host_runtime"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BACKEND", "ExecuTorchSegments", "emit_executorch"]
