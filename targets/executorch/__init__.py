"""ExecuTorch backend: one multi-method .pte (XNNPACK-delegated), one method per segment."""

from targets.executorch.emitter import emit_executorch
from targets.executorch.host_runtime import ExecuTorchSegments

__all__ = ["ExecuTorchSegments", "emit_executorch"]
