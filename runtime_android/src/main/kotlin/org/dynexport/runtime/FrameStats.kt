package org.dynexport.runtime

import java.nio.ByteBuffer
import java.nio.ByteOrder

/**
 * dynrt_frame_stats of the last [DynexportSession.step] it was passed to, read in place: the
 * runtime writes straight into this object's direct buffers (one dynrt_layer_stats of 32
 * bytes per gated layer, one uint64 per segment), so a step with stats allocates nothing.
 * Make one per session with [DynexportSession.newFrameStats] and reuse it every frame.
 * Reads are valid until the next step that fills it.
 */
class FrameStats internal constructor(val layerCount: Int, val segmentCount: Int) {
    internal val layers: ByteBuffer = direct(maxOf(1, layerCount) * LAYER_BYTES)
    internal val segments: ByteBuffer = direct(maxOf(1, segmentCount) * 8)
    internal val scalars: ByteBuffer = direct(3 * 8)
    // their addresses, taken once: a step passes these instead of the buffers (no JNI lookup per frame)
    internal val layersAddress: Long = NativeBridge.directAddress(layers)
    internal val segmentsAddress: Long = NativeBridge.directAddress(segments)
    internal val scalarsAddress: Long = NativeBridge.directAddress(scalars)

    /** The whole step, measured inside the runtime (ns). */
    val frameNs: Long get() = scalars.getLong(0)
    /** Time inside backend calls (ns). */
    val segmentsNs: Long get() = scalars.getLong(8)
    /** Fixed segments not run: no input changed since their last run. */
    val segmentsReused: Int get() = scalars.getLong(16).toInt()

    fun activeBlocks(layer: Int): Int = layers.getInt(at(layer))
    fun totalBlocks(layer: Int): Int = layers.getInt(at(layer) + 4)
    fun pathCode(layer: Int): Int = layers.getInt(at(layer) + 8)
    fun path(layer: Int): LayerPath = LayerPath.entries[pathCode(layer)]
    /** Blocks whose gate score sat within the tie epsilon of the threshold. */
    fun ties(layer: Int): Int = layers.getInt(at(layer) + 12)
    fun executedMacs(layer: Int): Long = layers.getLong(at(layer) + 16)
    fun denseMacs(layer: Int): Long = layers.getLong(at(layer) + 24)

    /** Wall time of segment [segment] (plan order) in the frame; 0 if it did not run. */
    fun segmentNs(segment: Int): Long {
        if (segment !in 0 until segmentCount) throw outOfRange("segment", segment, segmentCount)
        return segments.getLong(segment * 8)
    }

    private fun at(layer: Int): Int {
        if (layer !in 0 until layerCount) throw outOfRange("layer", layer, layerCount)
        return layer * LAYER_BYTES
    }

    private fun outOfRange(what: String, index: Int, count: Int) =
        DynexportException(DynexportStatus.INVALID_ARGUMENT, "FrameStats: $what $index out of range (0..${count - 1})")

    internal companion object {
        const val LAYER_BYTES = 32 // sizeof(dynrt_layer_stats), checked by a static_assert in the JNI layer

        fun direct(bytes: Int): ByteBuffer = ByteBuffer.allocateDirect(bytes).order(ByteOrder.nativeOrder())
    }
}
