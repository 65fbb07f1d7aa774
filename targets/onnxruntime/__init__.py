"""ONNX Runtime backend: one ONNX model per segment (NHWC I/O), packed into model.onnxpack,
run by the C runtime through ONNX Runtime's C API (targets/onnxruntime/native).

Importing this package imports neither torch nor onnxruntime: it only declares the backend.
It runs on host, android and ios, but is a default backend of none of them (``default_for``
empty): on this machine's bench it does not beat ExecuTorch (README.md); ask for it with
``--backend onnxruntime``.
"""

from targets.backend import Backend

BACKEND = Backend(
    name="onnxruntime",
    artifact="model.onnxpack",
    emitter="targets.onnxruntime.emitter:emit_onnxruntime",
    prepare=None,
    native_sources=("targets/onnxruntime/native",),
    platforms=("android", "ios", "host"),
    requires=("onnxruntime", "onnxscript", "onnx-ir"),
    host_runner="targets.onnxruntime.host_runtime:OnnxRuntimeSegments",
    default_on=(),
)
