package org.dynexport.runtime

/**
 * dynrt_session_info: the session's input and output (physical dims: `[1, H, W, C]` float32
 * NHWC for a 4-D tensor; lower ranks row-major), its gated layers and segments, and its memory
 * (everything it allocated, once, at open).
 */
class SessionInfo internal constructor(
    val inputShape: IntArray,
    val inputBytes: Long,
    val outputShape: IntArray,
    val outputBytes: Long,
    val layerCount: Int,
    val segmentCount: Int,
    val stateBytes: Long,
    val arenaBytes: Long,
) {
    /** Floats in one input frame (inputBytes / 4): the size of the FloatArray or FloatBuffer step takes. */
    val inputFloats: Int get() = (inputBytes / 4).toInt()
    val outputFloats: Int get() = (outputBytes / 4).toInt()

    override fun toString(): String =
        "SessionInfo(input ${inputShape.joinToString("x")}, output ${outputShape.joinToString("x")}, " +
            "$layerCount gated layers, $segmentCount segments, state $stateBytes B, arena $arenaBytes B)"
}

/** dynrt_layer_info: one gated layer's block grid (blocks = blockRows * blockCols) and output channels. */
class LayerInfo internal constructor(
    val name: String,
    val blocks: Int,
    val blockRows: Int,
    val blockCols: Int,
    val outChannels: Int,
)

/** dynrt_layer_path: which path a gated layer took in a frame. */
enum class LayerPath(val code: Int) {
    /** No active block: the previous output stands. */
    REUSE(0),
    /** Active blocks gathered, computed as a packed batch, scattered. */
    TILES(1),
    /** More active blocks than the dense cut-off: the dense segment ran. */
    DENSE(2),
}
