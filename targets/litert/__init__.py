"""LiteRT (TFLite) backend: one model.tflite with one signature per segment (NHWC I/O), run by
the C runtime through LiteRT's C API (CompiledModel on the CPU: XNNPACK; targets/litert/native).

Importing this package imports neither torch nor LiteRT: it only declares the backend. It runs
on android and host; it is a default backend of android (the phone runtime most apps already
ship) and, on host, built only with ``--backend litert`` (README.md: the bench decides).
"""

from targets.backend import Backend

BACKEND = Backend(
    name="litert",
    artifact="model.tflite",
    emitter="targets.litert.emitter:emit_litert",
    prepare=None,
    native_sources=("targets/litert/native",),
    platforms=("android", "host"),
    requires=("litert-torch", "ai-edge-litert"),
    host_runner="targets.litert.host_runtime:LiteRtSegments",
    default_on=("android",),
)
