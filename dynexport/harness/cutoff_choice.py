"""The dense cut-off from measured costs: pure functions, no timing, no files.

A gated layer with K active blocks runs either the tile path (gather K tiles, the tile
segment at batch K, scatter K blocks) or the dense path (the dense segment, copy K blocks).
Scatter and the dense path's block copy move the same bytes, and the gate, the reference
update and the branch are common to both, so the paths differ by

    tile path  = tile segment at K  +  K x (copying one packed tile)
    dense path = dense segment

Invariants:
- ``choose_cutoff`` returns the largest K such that the tile path is cheaper than the dense
  path for *every* K' <= K (0 when it is not cheaper even at K = 1): a frame with at most
  that many active blocks never takes the slower path, as far as the table says;
- the result never exceeds the number of tile costs given (the tile segment's max batch).
"""

from __future__ import annotations

from typing import Sequence

# Up to this max batch every K is measured; above it, SAMPLED_BATCHES values of K, spread
# evenly, with the costs in between interpolated (a tile segment's time is close to linear
# in K: DESIGN.md's measurements).
MEASURE_EVERY_BATCH_UP_TO = 32
SAMPLED_BATCHES = 25


def batches_to_measure(max_batch: int) -> list[int]:
    """The values of K to time for a tile segment of this max batch: all of 1..max_batch up to
    MEASURE_EVERY_BATCH_UP_TO, else an even spread that always includes 1 and max_batch."""
    if max_batch < 1:
        return []
    if max_batch <= MEASURE_EVERY_BATCH_UP_TO:
        return list(range(1, max_batch + 1))
    step = (max_batch - 1) / (SAMPLED_BATCHES - 1)
    return sorted({1 + round(i * step) for i in range(SAMPLED_BATCHES)})


def interpolate_costs(measured: dict[int, float], max_batch: int) -> list[float]:
    """Costs for K = 1..max_batch (index K - 1), linear between the measured K; the measured K
    must include 1 and max_batch."""
    batches = sorted(measured)
    if not batches or batches[0] != 1 or batches[-1] != max_batch:
        raise ValueError(f"measured batches {batches} must include 1 and {max_batch}")
    costs = []
    right = 0
    for k in range(1, max_batch + 1):
        while batches[right] < k:
            right += 1
        if batches[right] == k:
            costs.append(measured[k])
            continue
        low, high = batches[right - 1], batches[right]
        share = (k - low) / (high - low)
        costs.append(measured[low] + share * (measured[high] - measured[low]))
    return costs


def tile_path_costs(tile_segment_ms: Sequence[float], copy_ms_per_tile: float) -> list[float]:
    """The tile path's cost at K = 1..len(tile_segment_ms): the segment plus K tile copies."""
    return [ms + k * copy_ms_per_tile for k, ms in enumerate(tile_segment_ms, start=1)]


def choose_cutoff(tile_path_ms: Sequence[float], dense_path_ms: float) -> int:
    """The largest K with tile_path_ms[K' - 1] < dense_path_ms for every K' <= K."""
    for k, cost in enumerate(tile_path_ms, start=1):
        if not cost < dense_path_ms:
            return k - 1
    return len(tile_path_ms)
