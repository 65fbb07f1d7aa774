"""Merge several .pte programs with distinct method names into one .pte.

Why: ExecuTorch lowers methods one after another with a fixed cost of seconds each; lowering
disjoint groups of segments in parallel processes and merging their programs keeps a build
of a few dozen segments within a minute on two cores.

Each part's execution plans keep their own memory plans; what is shared is re-indexed:
inline delegate payloads, constant buffers (entry 0 is the reserved empty buffer in every
part) and the named data store (delegate weights, keyed by content hash).
"""

from __future__ import annotations


def merge_programs(parts: list[bytes]) -> bytes:
    from executorch.exir._serialize._named_data_store import NamedDataStoreOutput
    from executorch.exir._serialize._program import PTEFile, deserialize_pte_binary, serialize_pte_binary
    from executorch.exir.schema import DataLocation, Tensor

    if len(parts) == 1:
        return parts[0]
    files = [deserialize_pte_binary(part) for part in parts]
    merged = files[0].program
    names = [plan.name for plan in merged.execution_plan]
    buffers, entries = [], {}

    def add_named_data(store: NamedDataStoreOutput | None) -> None:
        if store is None:
            return
        if store.external_data:
            raise ValueError("cannot merge programs with external named data")
        for key, entry in store.pte_data.items():
            if key in entries:
                continue
            buffers.append(store.buffers[entry.buffer_index])
            entries[key] = type(entry)(len(buffers) - 1, entry.alignment, entry.tensor_layout)

    add_named_data(files[0].named_data)
    for part in files[1:]:
        program = part.program
        delegate_offset = len(merged.backend_delegate_data)
        constant_offset = len(merged.constant_buffer) - 1
        merged.backend_delegate_data.extend(program.backend_delegate_data)
        merged.constant_buffer.extend(program.constant_buffer[1:])
        for plan in program.execution_plan:
            if plan.name in names:
                raise ValueError(f"method {plan.name} is in more than one part")
            names.append(plan.name)
            for delegate in plan.delegates:
                if delegate.processed.location != DataLocation.INLINE:
                    raise ValueError("expected inline delegate data after deserialization")
                delegate.processed.index += delegate_offset
            for value in plan.values:
                if isinstance(value.val, Tensor) and value.val.data_buffer_idx > 0:
                    value.val.data_buffer_idx += constant_offset
            merged.execution_plan.append(plan)
        add_named_data(part.named_data)
    named = NamedDataStoreOutput(buffers=buffers, pte_data=entries, external_data={}) if entries else None
    return bytes(serialize_pte_binary(PTEFile(program=merged, mutable_data=None, named_data=named),
                                      extract_delegate_segments=True, segment_alignment=128))
