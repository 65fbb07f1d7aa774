"""Run segments of a .pte through ExecuTorch's Python runtime (the host check of the artifact;
the app uses the C runtime)."""

from __future__ import annotations

import torch


class ExecuTorchSegments:
    """SegmentRunner over a loaded .pte. Keeps the program bytes alive as long as the program
    and its methods: ExecuTorch reads them lazily, and freeing them first crashes later."""

    def __init__(self, pte: bytes):
        from executorch.runtime import Runtime

        self._pte = bytes(pte)
        self._program = Runtime.get().load_program(self._pte)
        self._methods = {name: self._program.load_method(name) for name in self._program.method_names}

    @property
    def method_names(self) -> set[str]:
        return set(self._methods)

    def method(self, name: str):
        """The loaded ExecuTorch method ``name`` (KeyError if the program has none)."""
        return self._methods[name]

    def run(self, name, inputs):
        method = self._methods[name]
        prepared = [t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t.contiguous() for t in inputs]
        return list(method.execute(prepared))
