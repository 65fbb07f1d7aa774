"""The ONNX Runtime artifact (model.onnxpack): one file holding one ONNX model per segment.

Layout (all integers little-endian; README.md in this folder is the reference):

    magic        8 bytes  b"DXONNXP1"
    count        u32      number of segments, 1..4096
    reserved     u32      0
    count entries, each:
      name_bytes u32      1..255, then the UTF-8 name (no NUL)
      offset     u64      of the model's bytes from the file's start
      size       u64      model bytes (> 0)
    models       the ONNX ModelProto bytes, in entry order, each starting at its offset

Invariant: ``pack_segments`` and ``unpack_segments`` are inverses; ``unpack_segments`` (and
the C adapter, targets/onnxruntime/native/dynrt_onnxruntime_pack.c) refuse any file whose
entries leave the file, overlap the directory or each other, or repeat a name.
"""

from __future__ import annotations

import struct

from dynexport.errors import DynexportError

MAGIC = b"DXONNXP1"
MAX_SEGMENTS = 4096
MAX_NAME_BYTES = 255
_HEADER = struct.Struct("<8sII")
_ENTRY = struct.Struct("<QQ")


class PackError(DynexportError):
    """A model.onnxpack that is not one this version writes (truncated, tampered, ...)."""


def pack_segments(models: dict[str, bytes]) -> bytes:
    """name -> ONNX model bytes -> the pack's bytes."""
    if not 1 <= len(models) <= MAX_SEGMENTS:
        raise PackError(f"onnxpack: {len(models)} segments; expected 1..{MAX_SEGMENTS}")
    names = [name.encode() for name in models]
    for name in names:
        if not 1 <= len(name) <= MAX_NAME_BYTES:
            raise PackError(f"onnxpack: segment name {name!r} is {len(name)} bytes; expected 1..{MAX_NAME_BYTES}")
    offset = _HEADER.size + sum(4 + len(name) + _ENTRY.size for name in names)
    directory, data = [], []
    for name, model in zip(names, models.values()):
        directory.append(struct.pack("<I", len(name)) + name + _ENTRY.pack(offset, len(model)))
        data.append(model)
        offset += len(model)
    return _HEADER.pack(MAGIC, len(models), 0) + b"".join(directory) + b"".join(data)


def unpack_segments(blob: bytes) -> dict[str, bytes]:
    """The pack's bytes -> name -> ONNX model bytes; PackError naming the first defect."""
    if len(blob) < _HEADER.size:
        raise PackError(f"onnxpack: {len(blob)} bytes, shorter than its {_HEADER.size}-byte header (truncated)")
    magic, count, _ = _HEADER.unpack_from(blob, 0)
    if magic != MAGIC:
        raise PackError(f"onnxpack: magic {magic!r}, expected {MAGIC!r} (not a model.onnxpack)")
    if not 1 <= count <= MAX_SEGMENTS:
        raise PackError(f"onnxpack: segment count {count}, expected 1..{MAX_SEGMENTS}")
    position, entries = _HEADER.size, []
    for index in range(count):
        if position + 4 > len(blob):
            raise PackError(f"onnxpack: entry {index} is past the end of the file (truncated)")
        (name_bytes,) = struct.unpack_from("<I", blob, position)
        if not 1 <= name_bytes <= MAX_NAME_BYTES or position + 4 + name_bytes + _ENTRY.size > len(blob):
            raise PackError(f"onnxpack: entry {index} has a name of {name_bytes} bytes that does not fit the file")
        name = blob[position + 4:position + 4 + name_bytes].decode(errors="replace")
        offset, size = _ENTRY.unpack_from(blob, position + 4 + name_bytes)
        position += 4 + name_bytes + _ENTRY.size
        entries.append((name, offset, size))
    models, end = {}, position
    for name, offset, size in sorted(entries, key=lambda e: e[1]):
        if size == 0 or offset < end or offset + size > len(blob):
            raise PackError(f"onnxpack: segment {name}'s model (offset {offset}, {size} bytes) is outside the "
                            f"file's {len(blob)} bytes or overlaps another part")
        if name in models:
            raise PackError(f"onnxpack: segment {name} appears twice")
        models[name] = blob[offset:offset + size]
        end = offset + size
    return {name: models[name] for name, _, _ in entries}
