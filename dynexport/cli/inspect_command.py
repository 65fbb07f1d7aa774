"""``dynexport inspect``."""

from __future__ import annotations

from dynexport.cli.options import OutDir


def _cutoff_text(cutoff: int, blocks: int) -> str:
    if cutoff == 0:
        return "always dense"
    if cutoff >= blocks:
        return "never (tiles only)"
    return f"> {cutoff} active"


def inspect(out: OutDir) -> None:
    """Print a built plan: gated layers, segments and state.

    Shows each gated layer's block grid, dense MACs and dense cut-off, every backend segment
    with its tensors, and the state tensors kept between frames with their bytes.

    Example: dynexport inspect out
    """
    from rich.console import Console
    from rich.table import Table

    from dynexport.harness.verify import open_build
    from dynexport.plan.frame_program import LayerKind, Role

    build = open_build(out)  # checked against its schema, checksums and the plan
    manifest, program = build.manifest, build.program
    console = Console()
    console.print(f"[bold]{out}[/]  target {manifest['target']}, backends {', '.join(manifest['backends'])}, "
                  f"input {'x'.join(map(str, manifest['input']['shape']))}, output "
                  f"{'x'.join(map(str, manifest['output']['shape']))}")
    for name, reason in manifest.get("failed_backends", {}).items():
        console.print(f"not built: {name} ({reason})", markup=False)
    console.print(f"plan: {len(program.segments)} segments, {len(program.instructions)} instructions, "
                  f"{len(program.tensors)} tensors; state {program.state_bytes():,} bytes")

    layers = Table(title="gated layers")
    for column in ("layer", "kind", "input", "output", "block", "blocks", "tile", "dense MACs", "dense cut-off"):
        layers.add_column(column, justify="right" if column not in ("layer", "kind") else "left")
    for layer, info in zip(program.layers, manifest["layers"]):
        grid = layer.grid
        rows, cols = grid.blocks
        layers.add_row(layer.name, LayerKind(layer.kind).name.lower(), "x".join(map(str, grid.input_size)),
                       "x".join(map(str, grid.output_size)), str(grid.block), f"{rows}x{cols}={rows * cols}",
                       "x".join(map(str, grid.tile_size)), f"{info['dense_macs']:,}",
                       _cutoff_text(layer.dense_cutoff, rows * cols))
    console.print(layers)
    tuning = manifest.get("tuning")
    if tuning:  # written by dynexport tune: the cut-offs above were measured, not guessed
        console.print(f"dense cut-offs tuned by measurement: {tuning.get('machine', '?')}, "
                      f"{tuning.get('threads', '?')} thread(s), {len(tuning.get('layers', []))} layer(s)")
    elif any(0 < layer.dense_cutoff < layer.grid.num_blocks for layer in program.layers):
        console.print("dense cut-offs: the build's default (half the blocks); 'dynexport tune' measures them")
    fallback = program.dense_fallback()
    if fallback is not None:
        layer, count, hold, hold_skips_gate = fallback
        held = ("" if not hold else f"; the {hold} frame(s) after run densely as a whole, that layer unscored"
                if hold_skips_gate else f", and so it does for the {hold} frame(s) after")
        console.print(f"dense fallback: above {count} of the {program.layers[layer].grid.num_blocks} blocks of "
                      f"layer {program.layers[layer].name}, the rest of the frame runs as one dense segment{held}",
                      markup=False)

    structured = manifest.get("pruning", {}).get("structured", {})
    if isinstance(structured, str):  # the step did not apply, and says why ("not realized: ...")
        console.print(f"structured pruning: {structured}")
    elif structured.get("layers"):  # written by the build's pruning step (dynexport.pruning)
        pruned = Table(title=f"pruning: {structured['removed_channels']} channels removed")
        for column in ("layer", "channels (in, out) before", "after", "MACs before", "after"):
            pruned.add_column(column, justify="left" if column == "layer" else "right")
        for row in structured["layers"]:
            pruned.add_row(row["name"], str(tuple(row["channels_before"])), str(tuple(row["channels_after"])),
                           f"{row['macs_before']:,}", f"{row['macs_after']:,}")
        console.print(pruned)
    for row in manifest.get("pruning", {}).get("unstructured", []):
        if "realized" in row:
            console.print(f"sparsity {row['name']}: {row['zeros']:,}/{row['weights']:,} zeros, {row['realized']}")

    segments = Table(title="segments")
    for column in ("segment", "inputs", "outputs", "batch"):
        segments.add_column(column)
    for segment in program.segments:
        describe = lambda ids: ", ".join(f"{program.tensors[i].name}{list(program.tensors[i].shape)}" for i in ids)
        segments.add_row(segment.name, describe(program.segment_inputs(segment)), describe(program.segment_outputs(segment)),
                         f"1..{segment.max_batch}" if segment.max_batch else "fixed")
    console.print(segments)

    state = Table(title="state tensors (kept between frames)")
    for column in ("tensor", "dims (NHWC)", "bytes"):
        state.add_column(column, justify="right" if column == "bytes" else "left")
    for tensor in program.tensors:
        if tensor.role == Role.STATE:
            state.add_row(tensor.name, "x".join(map(str, tensor.shape)), f"{tensor.nbytes:,}")
    console.print(state)
