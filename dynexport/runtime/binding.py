"""ctypes binding of the native runtime (``libdynrt_host``: the C core plus the callback
backend), for tests and host tools.

The library is built by CMake into ``build/host/`` at the repository root::

    cmake -S dynexport/runtime -B build/host -G Ninja -DCMAKE_BUILD_TYPE=Release
    cmake --build build/host

``DYNEXPORT_RUNTIME_LIB`` overrides where it is loaded from.

    backend = torch_callback_backend(compiled.program, compiled.segments)
    with NativeSession(plan_bytes, backend) as session:
        result = session.step(frame_nhwc)          # float32 [1, H, W, C] -> the plan output
        mask, channels = session.layer_decisions(0)
        session.last_stats["layers"][0]["active_blocks"]

Errors of the runtime raise ``RuntimeStatusError`` with ``.status`` (a ``Status``, the
``dynrt_status`` codes of ``include/dynrt.h``) and the session's message.
"""

from __future__ import annotations

import ctypes
import enum
import os
import sys
import threading
import weakref
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from dynexport.errors import DynexportError

LIBRARY_ENV = "DYNEXPORT_RUNTIME_LIB"
REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_DIR = REPO_ROOT / "build" / "host"
LIBRARY_FILE = {"darwin": "libdynrt_host.dylib", "win32": "dynrt_host.dll"}.get(sys.platform, "libdynrt_host.so")
BUILD_COMMAND = ("cmake -S dynexport/runtime -B build/host -G Ninja -DCMAKE_BUILD_TYPE=Release && "
                 "cmake --build build/host")


class Status(enum.IntEnum):
    """``dynrt_status``: the table of include/dynrt_status.def (tests/runtime/test_status_table.py
    checks they match)."""

    OK = 0
    INVALID_ARGUMENT = 100
    WRONG_BUFFER_SIZE = 101
    PLAN_TRUNCATED = 200
    PLAN_BAD_MAGIC = 201
    PLAN_VERSION = 202
    PLAN_CHECKSUM = 203
    PLAN_INVALID = 204
    ARTIFACT_MISMATCH = 205
    NONFINITE_INPUT = 300
    BACKEND_ERROR = 400
    SEGMENT_MISMATCH = 401
    OUT_OF_MEMORY = 500


class LayerPath(enum.IntEnum):
    """``dynrt_layer_path``: which path a gated layer took in a frame."""

    REUSE = 0
    TILES = 1
    DENSE = 2


class RuntimeLibraryNotFound(DynexportError, FileNotFoundError):
    """libdynrt_host is not built (or not where DYNEXPORT_RUNTIME_LIB points)."""


class RuntimeStatusError(DynexportError, RuntimeError):
    """A runtime call failed: ``status`` says how, the message what (the session's
    ``dynrt_session_last_error`` or the create error text)."""

    def __init__(self, status: int, message: str):
        try:
            self.status = Status(status)
        except ValueError:
            self.status = status
        self.message = message
        name = self.status.name if isinstance(self.status, Status) else str(status)
        super().__init__(f"{name} ({int(status)}): {message}")


# -- the C declarations ------------------------------------------------------------------

class SessionInfo(ctypes.Structure):
    _fields_ = [
        ("input_rank", ctypes.c_uint32), ("input_dims", ctypes.c_uint32 * 4), ("input_bytes", ctypes.c_size_t),
        ("output_rank", ctypes.c_uint32), ("output_dims", ctypes.c_uint32 * 4), ("output_bytes", ctypes.c_size_t),
        ("layer_count", ctypes.c_uint32), ("segment_count", ctypes.c_uint32),
        ("state_bytes", ctypes.c_size_t), ("arena_bytes", ctypes.c_size_t),
    ]


class LayerInfo(ctypes.Structure):
    _fields_ = [
        ("blocks", ctypes.c_uint32), ("block_rows", ctypes.c_uint32), ("block_cols", ctypes.c_uint32),
        ("out_channels", ctypes.c_uint32), ("name", ctypes.c_char_p),
    ]


class LayerStats(ctypes.Structure):
    _fields_ = [
        ("active_blocks", ctypes.c_uint32), ("total_blocks", ctypes.c_uint32), ("path", ctypes.c_uint32),
        ("ties", ctypes.c_uint32), ("executed_macs", ctypes.c_uint64), ("dense_macs", ctypes.c_uint64),
    ]


class FrameStats(ctypes.Structure):
    _fields_ = [
        ("layers", ctypes.POINTER(LayerStats)), ("layer_capacity", ctypes.c_uint32),
        ("segment_ns", ctypes.POINTER(ctypes.c_uint64)), ("segment_capacity", ctypes.c_uint32),
        ("frame_ns", ctypes.c_uint64), ("segments_ns", ctypes.c_uint64), ("segments_reused", ctypes.c_uint32),
    ]


SEGMENT_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32,
                                    ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_void_p))

_library = None
_library_lock = threading.Lock()


def library_path() -> Path:
    return Path(os.environ.get(LIBRARY_ENV) or BUILD_DIR / LIBRARY_FILE)


def load_library() -> ctypes.CDLL:
    """The loaded libdynrt_host (once per process)."""
    global _library
    with _library_lock:
        if _library is None:
            path = library_path()
            if not path.is_file():
                raise RuntimeLibraryNotFound(
                    f"the native runtime library {path} is not built: run `make setup` "
                    f"(or build it alone: {BUILD_COMMAND}), or point {LIBRARY_ENV} at a built libdynrt_host")
            _library = _declare(ctypes.CDLL(str(path)))
        return _library


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    c_status, handle, u32, size = ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_size_t
    u8_array = ctypes.POINTER(ctypes.c_uint8)
    signatures = {
        "dynrt_status_string": (ctypes.c_char_p, [c_status]),
        "dynrt_session_create": (c_status, [ctypes.c_char_p, size, handle, ctypes.c_char_p, size,
                                            ctypes.POINTER(handle)]),
        "dynrt_session_destroy": (None, [handle]),
        "dynrt_session_describe": (c_status, [handle, ctypes.POINTER(SessionInfo)]),
        "dynrt_session_reset": (c_status, [handle]),
        "dynrt_session_step": (c_status, [handle, ctypes.c_void_p, size, ctypes.c_void_p, size,
                                          ctypes.POINTER(FrameStats)]),
        "dynrt_session_last_error": (ctypes.c_char_p, [handle]),
        "dynrt_session_layer_decisions": (c_status, [handle, u32, u8_array, size, u8_array, size]),
        "dynrt_session_describe_layer": (c_status, [handle, u32, ctypes.POINTER(LayerInfo)]),
        "dynrt_session_set_tie_decisions": (c_status, [handle, u32, u8_array, size]),
        "dynrt_backend_destroy": (None, [handle]),
        "dynrt_callback_backend_create": (c_status, [SEGMENT_CALLBACK, ctypes.c_void_p, ctypes.POINTER(handle)]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes
    return lib


def status_string(status: int) -> str:
    return load_library().dynrt_status_string(int(status)).decode()


# -- backends ----------------------------------------------------------------------------

class CallbackBackend:
    """Segments run by a Python function ``run(segment_index, batch, inputs, outputs)``:
    ``inputs`` / ``outputs`` are numpy views over the runtime's buffers (float32 or int32,
    NHWC for 4-D, the plan's dims; the first input and output of a tile segment cut to
    ``batch``). ``run`` writes the outputs in place. An exception in ``run`` fails the frame
    (DYNRT_BACKEND_ERROR); the session re-raises it as the error's ``__cause__``."""

    _handle = None  # set once created; close() and __del__ rely on it existing

    def __init__(self, run: Callable[[int, int, list, list], None]):
        self.run = run
        self._sessions = weakref.WeakSet()  # open sessions: the backend must outlive them
        self.pending_exception: Optional[BaseException] = None
        self._segments = None  # per segment: (input specs, output specs, max_batch) from the plan
        self._views: dict[tuple, tuple] = {}  # (segment, buffer addresses) -> (input views, output views)
        # the CFUNCTYPE object must live as long as the C side may call it
        self._trampoline = SEGMENT_CALLBACK(self._call)
        self._lib = load_library()
        handle = ctypes.c_void_p()
        status = self._lib.dynrt_callback_backend_create(self._trampoline, None, ctypes.byref(handle))
        if status != Status.OK:
            raise RuntimeStatusError(status, "could not create the callback backend")
        self._handle = handle

    @property
    def handle(self) -> ctypes.c_void_p:
        if self._handle is None:
            raise ValueError("the backend was closed")
        return self._handle

    def bind(self, program) -> None:
        """Learn the operand shapes of a plan's segments (NativeSession calls this)."""
        def spec(tensor_index):
            t = program.tensors[tensor_index]
            return tuple(t.shape), np.float32 if t.dtype == 0 else np.int32

        segments = [
            ([spec(t) for t in program.segment_inputs(s)], [spec(t) for t in program.segment_outputs(s)], s.max_batch)
            for s in program.segments
        ]
        if self._segments is not None and segments != self._segments and len(self._sessions) > 0:
            # the views are made from these shapes: another plan's would misread the buffers
            raise ValueError("this callback backend serves open sessions of another plan: use one backend per plan")
        if segments != self._segments:
            self._views = {}
        self._segments = segments

    def _views_for(self, segment: int, inputs, outputs):
        """Full-size numpy views over the segment's buffers; the runtime passes the same
        addresses on every call of a session (each session its own), so they are made once
        per session and segment."""
        input_specs, output_specs, _ = self._segments[segment]
        addresses = (tuple(inputs[i] for i in range(len(input_specs))),
                     tuple(outputs[i] for i in range(len(output_specs))))
        cached = self._views.get((segment, addresses))
        if cached is None:
            def view(address, shape_dtype):
                shape, dtype = shape_dtype
                count = int(np.prod(shape)) if shape else 1
                c_type = ctypes.c_float if dtype == np.float32 else ctypes.c_int32
                return np.ctypeslib.as_array((c_type * count).from_address(address)).reshape(shape)

            cached = ([view(a, s) for a, s in zip(addresses[0], input_specs)],
                      [view(a, s) for a, s in zip(addresses[1], output_specs)])
            self._views[(segment, addresses)] = cached
        return cached

    def _call(self, _user_data, segment, batch, inputs, outputs) -> int:
        try:
            in_views, out_views = self._views_for(segment, inputs, outputs)
            if self._segments[segment][2] > 0:  # tile segment: the packed batch is cut to `batch`
                in_views = [in_views[0][:batch]] + in_views[1:]
                out_views = [out_views[0][:batch]] + out_views[1:]
            self.run(segment, batch, in_views, out_views)
            return 0
        except BaseException as exc:  # never let an exception unwind into C
            self.pending_exception = exc
            return 1

    def close(self) -> None:
        if self._handle is not None:
            if len(self._sessions) > 0:
                raise RuntimeError(f"close the {len(self._sessions)} session(s) using this backend first")
            self._lib.dynrt_backend_destroy(self._handle)
            self._handle = None

    def __del__(self):
        if self._handle is not None and len(self._sessions) == 0:
            self.close()


def _logical(array: np.ndarray):
    """A torch NCHW (channels_last) view of an NHWC numpy buffer; other ranks unchanged."""
    import torch

    tensor = torch.from_numpy(array)
    return tensor.permute(0, 3, 1, 2) if tensor.dim() == 4 else tensor


def torch_callback_backend(program, segments) -> CallbackBackend:
    """A callback backend running each segment as the compiler's torch module (as
    ``TorchSegments`` does for the interpreter)."""
    from dynexport.plan.interpreter import TorchSegments

    runner = TorchSegments(segments)
    names = [s.name for s in program.segments]

    def run(index, _batch, inputs, outputs):
        results = runner.run(names[index], [_logical(a) for a in inputs])
        for array, result in zip(outputs, results):
            target = _logical(array)
            target.copy_(result.reshape(target.shape))

    return CallbackBackend(run)


# -- sessions ----------------------------------------------------------------------------

class NativeSession:
    """One runtime session over a plan (``plan.dxfp`` bytes) and a backend. ``stats`` keeps
    every frame's statistics (``keep_stats``), ``last_stats`` the last one's."""

    ERROR_CAPACITY = 512
    _handle = None  # set once created; close() and __del__ rely on it existing

    def __init__(self, plan_bytes: bytes, backend: CallbackBackend, keep_stats: bool = True):
        from dynexport.plan.frame_program import FrameProgram, PlanFormatError

        self._lib = load_library()
        plan_bytes = bytes(plan_bytes)
        try:
            self.program = FrameProgram.from_bytes(plan_bytes)
        except PlanFormatError:
            self.program = None  # the runtime reports what is wrong with it below
        if self.program is not None and hasattr(backend, "bind"):
            backend.bind(self.program)
        self.backend = backend  # must outlive the session
        error = ctypes.create_string_buffer(self.ERROR_CAPACITY)
        handle = ctypes.c_void_p()
        status = self._lib.dynrt_session_create(plan_bytes, len(plan_bytes), backend.handle, error,
                                                self.ERROR_CAPACITY, ctypes.byref(handle))
        if status != Status.OK:
            raise RuntimeStatusError(status, error.value.decode(errors="replace"))
        self._handle = handle
        if hasattr(backend, "_sessions"):
            backend._sessions.add(self)
        info = SessionInfo()
        self._check(self._lib.dynrt_session_describe(handle, ctypes.byref(info)), "describe")
        self.info = info
        self.input_shape = tuple(info.input_dims[: info.input_rank])
        self.output_shape = tuple(info.output_dims[: info.output_rank])
        self.keep_stats = keep_stats
        self.stats: list[dict] = []
        self.last_stats: Optional[dict] = None
        self._layer_stats = (LayerStats * max(1, info.layer_count))()
        self._segment_ns = (ctypes.c_uint64 * max(1, info.segment_count))()
        self._frame_stats = FrameStats(self._layer_stats, info.layer_count, self._segment_ns, info.segment_count, 0, 0)

    # -- lifetime ---------------------------------------------------------------------------
    def close(self) -> None:
        if self._handle is not None:
            self._lib.dynrt_session_destroy(self._handle)
            self._handle = None
            sessions = getattr(self.backend, "_sessions", None)
            if sessions is not None:
                sessions.discard(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        self.close()

    @property
    def handle(self):
        if self._handle is None:
            raise ValueError("the session was closed")
        return self._handle

    def _check(self, status: int, what: Optional[str] = None) -> None:
        """Raise for a failed call. Calls on a const session (describe, layer_decisions)
        leave no last_error, so they name themselves (`what`)."""
        if status != Status.OK:
            message = f"{what}: {status_string(status)}" if what else \
                self._lib.dynrt_session_last_error(self._handle).decode(errors="replace")
            error = RuntimeStatusError(status, message)
            cause = getattr(self.backend, "pending_exception", None)
            if cause is not None:
                self.backend.pending_exception = None
                raise error from cause
            raise error

    # -- the API ------------------------------------------------------------------------------
    def describe(self) -> dict:
        info = SessionInfo()
        self._check(self._lib.dynrt_session_describe(self.handle, ctypes.byref(info)), "describe")
        return {
            "input_shape": tuple(info.input_dims[: info.input_rank]), "input_bytes": info.input_bytes,
            "output_shape": tuple(info.output_dims[: info.output_rank]), "output_bytes": info.output_bytes,
            "layer_count": info.layer_count, "segment_count": info.segment_count,
            "state_bytes": info.state_bytes, "arena_bytes": info.arena_bytes,
        }

    def describe_layer(self, layer: int) -> dict:
        """A gated layer's block grid, output channels and name."""
        if not 0 <= layer < self.info.layer_count:
            raise IndexError(f"layer {layer}: the plan has {self.info.layer_count} gated layers")
        info = LayerInfo()
        self._check(self._lib.dynrt_session_describe_layer(self.handle, layer, ctypes.byref(info)),
                    f"describe_layer({layer})")
        return {"name": info.name.decode(errors="replace"), "blocks": info.blocks, "block_rows": info.block_rows,
                "block_cols": info.block_cols, "out_channels": info.out_channels}

    def reset(self) -> None:
        self._check(self._lib.dynrt_session_reset(self.handle), "reset")

    def step(self, frame: np.ndarray) -> np.ndarray:
        """One frame, float32 in the plan's physical layout ([1, H, W, C] NHWC for 4-D)."""
        if not isinstance(frame, np.ndarray) or frame.dtype != np.float32:
            got = frame.dtype if isinstance(frame, np.ndarray) else type(frame).__name__
            raise TypeError(f"step: expected a float32 numpy frame (NHWC {self.input_shape}), got {got}")
        frame = np.ascontiguousarray(frame)
        output = np.empty(self.output_shape, dtype=np.float32)
        status = self._lib.dynrt_session_step(self.handle, frame.ctypes.data, frame.nbytes, output.ctypes.data,
                                              output.nbytes, ctypes.byref(self._frame_stats))
        self._check(status)
        self.last_stats = self._stats_dict()
        if self.keep_stats:
            self.stats.append(self.last_stats)
        return output

    def layer_decisions(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """(block mask [blocks] bool: computed this frame, channel decisions [Co] uint8:
        0 skip, 1 reuse, 2 compute) of the last frame."""
        shape = self.describe_layer(layer)
        blocks, channels = shape["blocks"], shape["out_channels"]
        mask = np.zeros(blocks, dtype=np.uint8)
        decisions = np.zeros(channels, dtype=np.uint8)
        u8 = ctypes.POINTER(ctypes.c_uint8)
        status = self._lib.dynrt_session_layer_decisions(self.handle, layer, mask.ctypes.data_as(u8), blocks,
                                                         decisions.ctypes.data_as(u8), channels)
        self._check(status, f"layer_decisions({layer})")
        return mask.astype(bool), decisions

    def set_tie_decisions(self, layer: int, reference_mask) -> None:
        """For the next step only: blocks of `layer` in the tie band take this decision."""
        mask = np.ascontiguousarray(np.asarray(reference_mask).astype(np.uint8))
        status = self._lib.dynrt_session_set_tie_decisions(self.handle, layer,
                                                           mask.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)),
                                                           mask.size)
        self._check(status)

    def last_error(self) -> str:
        return self._lib.dynrt_session_last_error(self.handle).decode(errors="replace")

    def _stats_dict(self) -> dict:
        s = self._frame_stats
        return {
            "frame_ns": s.frame_ns,
            "segments_ns": s.segments_ns,
            "segments_reused": s.segments_reused,
            "segment_ns": [self._segment_ns[i] for i in range(self.info.segment_count)],
            "layers": [
                {"active_blocks": l.active_blocks, "total_blocks": l.total_blocks, "path": LayerPath(l.path),
                 "ties": l.ties, "executed_macs": l.executed_macs, "dense_macs": l.dense_macs}
                for l in (self._layer_stats[i] for i in range(self.info.layer_count))
            ],
        }
