"""What every gated layer shares: inter-frame state held in buffers, input checks that leave
that state untouched, and per-frame statistics.

State lives in non-persistent buffers, so ``torch.export`` lifts it to explicit graph
inputs and records its update as buffer mutations. In eager mode a frame *rebinds* the
buffers to new tensors instead of writing into them: a snapshot of the state is then just a
dict of references, which is what makes ``dynexport.step`` transactional.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from dynexport.errors import ExportError, FrameError
from dynexport.nn.skip_conv import make_grid


@dataclasses.dataclass(frozen=True)
class LayerFrameStats:
    """What one gated layer did on the last frame (summed over the batch)."""

    name: str
    active_fraction: float  # computed blocks / all blocks (D-STEP: computed outputs / all)
    executed_macs: int  # MACs actually needed, gate MACs included
    dense_macs: int  # MACs of the same layer without a gate
    gate_macs: int


class GatedLayer(nn.Module):
    """Base of SkipConv2d and DStepConv2d. Subclasses list their state buffers in
    ``STATE_BUFFERS`` and implement ``_allocate_state(x)``."""

    STATE_BUFFERS: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("primed", torch.zeros((), dtype=torch.bool), persistent=False)
        self.last_stats: LayerFrameStats | None = None
        # The hard decisions of the last eval frame (SkipConv2d: block mask [N, blocks];
        # DStepConv2d: (patch mask [N, patches], channel decision [N, Cout])).
        self.last_decisions = None
        self.stream_name = type(self).__name__

    # -- state ---------------------------------------------------------------------------
    def reset_state(self) -> None:
        """Forget the past: the next frame is computed densely. Keeps allocated shapes."""
        self._set_buffer("primed", torch.zeros((), dtype=torch.bool, device=self.primed.device))
        self.last_stats = None
        self.last_decisions = None

    def unprime(self) -> None:
        """Forget the past as ``reset_state`` does, but keep this frame's stats and decisions
        (the dense fallback unprimes layers it computed densely, after they ran)."""
        self._set_buffer("primed", torch.zeros((), dtype=torch.bool, device=self.primed.device))

    def state_snapshot(self) -> dict[str, Tensor | None]:
        names = ("primed",) + self.STATE_BUFFERS
        return {name: self._buffers.get(name) for name in names}

    def restore_state(self, snapshot: dict[str, Tensor | None]) -> None:
        for name, value in snapshot.items():
            self._buffers[name] = value

    def _set_buffer(self, name: str, value: Tensor) -> None:
        current = self._buffers.get(name)
        if torch.compiler.is_compiling() and current is not None:
            current.copy_(value)  # export records this as a buffer mutation
        else:
            self._buffers[name] = value

    def _state_shapes(self, x: Tensor) -> dict[str, tuple[int, ...]]:
        """Shape of each state buffer for input ``x``."""
        raise NotImplementedError

    def _ensure_state(self, x: Tensor) -> None:
        """(Re)allocate the state when the input's size or batch differs from what it was
        sized for; a new allocation starts unprimed (the next frame is dense).

        Under ``torch.export`` nothing can be allocated (export lifts the buffers as they
        are before tracing), so state of another shape is an ExportError naming the fix."""
        shapes = self._state_shapes(x)
        stale = [name for name, shape in shapes.items()
                 if self._buffers.get(name) is None or tuple(self._buffers[name].shape) != tuple(shape)]
        if stale and torch.compiler.is_compiling():
            shape = "x".join(str(int(d)) for d in x.shape)
            raise ExportError(
                f"layer '{self.stream_name}': its state is not allocated for a {shape} input, so torch.export "
                "cannot record it. Export with dynexport.export(model, input_shape, path), or run "
                "dynexport.step(model, example) once at that shape (then dynexport.reset(model)) before "
                "torch.export.export")
        if stale:
            for name, shape in shapes.items():
                self._buffers[name] = x.new_zeros(shape)
            self._buffers["primed"] = torch.zeros((), dtype=torch.bool, device=x.device)

    def _apply_pruning(self) -> None:
        """Recompute the weights ``torch.nn.utils.prune`` reparametrizes (``weight =
        weight_orig * weight_mask``). Pruning does that in each pruned module's forward
        pre-hook, but a gated layer hands its convolutions' weights to its step function
        without calling them, so it runs those hooks itself: training then updates
        ``weight_orig``, and export traces the product (folded by the compiler) instead of a
        stale tensor attribute."""
        from torch.nn.utils import prune

        for module in self.modules():
            for hook in module._forward_pre_hooks.values():
                if isinstance(hook, prune.BasePruningMethod):
                    hook(module, None)

    # -- geometry ---------------------------------------------------------------------------
    @property
    def block_edge(self) -> int:
        """Edge of a block / patch in output positions."""
        raise NotImplementedError

    def conv_args(self):
        c = self.conv
        return list(_pair(c.stride)), list(_pair(c.padding)), list(_pair(c.dilation)), c.groups

    def block_grid(self, input_size):
        stride, padding, dilation, _ = self.conv_args()
        return make_grid(input_size, self.conv.weight.shape, stride, padding, dilation, self.block_edge)

    def block_positions(self, grid) -> Tensor:
        """[blocks] float: real output positions per block (fewer at the border)."""
        rows, cols = grid.blocks
        return torch.tensor([grid.block_positions(r, c) for r in range(rows) for c in range(cols)], dtype=torch.float32)

    # -- input checks -------------------------------------------------------------------
    def _check_input(self, x: Tensor, in_channels: int) -> None:
        """Raise FrameError, before any state is touched, for a frame this layer cannot take."""
        if torch.compiler.is_compiling():
            return
        where = f"layer '{self.stream_name}'"
        if not isinstance(x, Tensor):
            raise FrameError(f"{where}: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise FrameError(f"{where}: expected a 4-D input [N, {in_channels}, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != in_channels:
            raise FrameError(
                f"{where}: expected {in_channels} input channels, got shape {tuple(x.shape)}"
            )
        if x.dtype != torch.float32:
            raise FrameError(f"{where}: expected dtype float32, got {x.dtype}")
        if not bool(torch.isfinite(x).all()):
            raise FrameError(f"{where}: input contains NaN or Inf; the frame was rejected and the state kept")
        if bool(self.primed):
            expected = self._expected_input_shape()
            if expected is not None and tuple(x.shape) != expected:
                raise FrameError(
                    f"{where}: input shape changed from {expected} to {tuple(x.shape)} mid-stream; "
                    "call dynexport.reset(model) before changing resolution or batch size"
                )

    def _expected_input_shape(self) -> tuple[int, ...] | None:
        return getattr(self, "_input_shape", None)

    # -- pickling -------------------------------------------------------------------------
    def __getstate__(self):
        # Per-frame bookkeeping is not part of a saved model (and would need more classes
        # allow-listed to load it back).
        state = self.__dict__.copy()
        state["last_stats"] = None
        state["last_decisions"] = None
        state["_mac_terms"] = []
        return state
