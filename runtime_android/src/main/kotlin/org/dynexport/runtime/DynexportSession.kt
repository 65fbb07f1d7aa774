package org.dynexport.runtime

import java.io.File
import java.io.IOException
import java.io.RandomAccessFile
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.FloatBuffer
import java.nio.channels.FileChannel

/**
 * One compiled dynamic video model, run frame by frame: a dynrt backend and a dynrt session
 * over it (dynexport/runtime/include/dynrt.h), behind one handle.
 *
 * ```
 * DynexportSession.open(File(buildFolder)).use { session ->
 *     val input = session.newInputBuffer()      // direct, native order: float32 NHWC, info.inputFloats
 *     val output = session.newOutputBuffer()
 *     val stats = session.newFrameStats()
 *     for (frame in camera) {                    // fill input with the frame, then
 *         session.step(input, output, stats)     // allocates nothing
 *     }
 *     session.reset()                            // scene cut: the next frame is computed densely
 * }
 * ```
 *
 * All memory the session needs is allocated by `open`; [step], [reset] and the queries
 * allocate nothing on the JVM or native side. Not thread-safe: one thread at a time per
 * session; independent sessions may run on different threads. Every failure is a
 * [DynexportException] carrying the dynrt status code. [close] frees the native session and
 * backend; calls after it throw (INVALID_ARGUMENT, "the session is closed").
 */
class DynexportSession private constructor(
    private var handle: Long,
    /** The backend running the segments ("executorch", ...: the plan's artifact name). */
    val backend: String,
    private val threadsAsked: Int,
    /** The artifact's bytes, when the backend reads them in place: kept reachable until close. */
    private var artifactKeptAlive: ByteBuffer?,
) : AutoCloseable {
    val info: SessionInfo

    init {
        val ints = IntArray(12)
        val longs = LongArray(4)
        NativeBridge.describe(handle, ints, longs)
        info = SessionInfo(
            inputShape = ints.copyOfRange(1, 1 + ints[0]), inputBytes = longs[0],
            outputShape = ints.copyOfRange(6, 6 + ints[5]), outputBytes = longs[1],
            layerCount = ints[10], segmentCount = ints[11], stateBytes = longs[2], arenaBytes = longs[3],
        )
    }

    /** Threads the backend's segments run with (its own report when it has one, else the count asked for). */
    val threadCount: Int get() = NativeBridge.threadCount(live(), threadsAsked)

    /**
     * One frame. [input]: [SessionInfo.inputFloats] floats from its position to its limit
     * (float32 NHWC); [output]: [SessionInfo.outputFloats] floats from its position. Both must be
     * direct and in native byte order (`ByteBuffer.allocateDirect(n).order(ByteOrder.nativeOrder())
     * .asFloatBuffer()`, or [newInputBuffer]); positions are not moved. [stats], if given, is
     * filled in place. A frame with NaN/Inf is refused (NONFINITE_INPUT) before any state changes.
     */
    @JvmOverloads
    fun step(input: FloatBuffer, output: FloatBuffer, stats: FrameStats? = null) {
        val h = live()
        checkDirect(input, "input")
        checkDirect(output, "output")
        if (output.isReadOnly) throw invalid("output is a read-only buffer")
        // remaining() counts from position to limit, and limit <= capacity: the C side reads exactly these
        checkFloats(input.remaining(), info.inputFloats, "input", "remaining")
        checkFloats(output.remaining(), info.outputFloats, "output", "remaining")
        checkStats(stats)
        NativeBridge.stepDirect(
            h, input, input.position() * 4L, info.inputBytes, output, output.position() * 4L, info.outputBytes,
            stats?.layersAddress ?: 0L, stats?.segmentsAddress ?: 0L, stats?.scalarsAddress ?: 0L,
            stats?.layerCount ?: 0, stats?.segmentCount ?: 0,
        )
    }

    /** One frame on float arrays, pinned for the call: whole arrays of exactly inputFloats / outputFloats. */
    @JvmOverloads
    fun step(input: FloatArray, output: FloatArray, stats: FrameStats? = null) {
        val h = live()
        checkFloats(input.size, info.inputFloats, "input", "size")
        checkFloats(output.size, info.outputFloats, "output", "size")
        checkStats(stats)
        NativeBridge.stepArrays(
            h, input, 0, input.size, output, 0, output.size,
            stats?.layersAddress ?: 0L, stats?.segmentsAddress ?: 0L, stats?.scalarsAddress ?: 0L,
            stats?.layerCount ?: 0, stats?.segmentCount ?: 0,
        )
    }

    /** Scene cut / keyframe: the next frame is computed densely, as after open. */
    fun reset() = NativeBridge.reset(live())

    /** Gated layer [index] (0 until info.layerCount, plan order). */
    fun layer(index: Int): LayerInfo {
        val ints = IntArray(4)
        val name = NativeBridge.describeLayer(live(), index, ints)
        return LayerInfo(name, ints[0], ints[1], ints[2], ints[3])
    }

    /**
     * The last frame's decisions of gated layer [layer], into direct byte buffers from their
     * positions (either may be null): blockMask[blocks] = 1 where the block was computed;
     * channelDecisions[outChannels] = 0 skip, 1 reuse, 2 compute.
     */
    fun layerDecisions(layer: Int, blockMask: ByteBuffer?, channelDecisions: ByteBuffer?) {
        val h = live()
        blockMask?.let { checkDirect(it, "blockMask") }
        channelDecisions?.let { checkDirect(it, "channelDecisions") }
        NativeBridge.layerDecisions(
            h, layer, blockMask, blockMask?.position()?.toLong() ?: 0L, blockMask?.remaining()?.toLong() ?: 0L,
            channelDecisions, channelDecisions?.position()?.toLong() ?: 0L,
            channelDecisions?.remaining()?.toLong() ?: 0L,
        )
    }

    /**
     * Verification runs only: for the next step, blocks of [layer] in the gate's tie band take
     * the decision in [referenceMask] (blocks bytes from its position, 1 = compute).
     */
    fun setTieDecisions(layer: Int, referenceMask: ByteBuffer, blocks: Int) {
        val h = live()
        checkDirect(referenceMask, "referenceMask")
        if (referenceMask.remaining() < blocks) {
            throw DynexportException(DynexportStatus.WRONG_BUFFER_SIZE,
                "setTieDecisions: referenceMask has ${referenceMask.remaining()} bytes remaining, $blocks needed")
        }
        NativeBridge.setTieDecisions(h, layer, referenceMask, referenceMask.position().toLong(), blocks.toLong())
    }

    /** Tuning runs only: runs segment [segment] once at [batch]; its backend time in ns. Resets the session. */
    fun timeSegment(segment: Int, batch: Int): Long = NativeBridge.timeSegment(live(), segment, batch)

    /** A direct, native-order buffer of one input frame, at a 64-byte aligned address (as the native driver's). */
    fun newInputBuffer(): FloatBuffer = alignedFloats(info.inputFloats)
    fun newOutputBuffer(): FloatBuffer = alignedFloats(info.outputFloats)
    fun newFrameStats(): FrameStats = FrameStats(info.layerCount, info.segmentCount)

    val isClosed: Boolean get() = handle == 0L

    /** Frees the native session, then its backend. Idempotent. */
    override fun close() {
        val h = handle
        handle = 0L
        NativeBridge.close(h)
        artifactKeptAlive = null
    }

    private fun live(): Long {
        if (handle == 0L) throw invalid("the session is closed")
        return handle
    }

    private fun checkDirect(buffer: java.nio.Buffer, what: String) {
        if (!buffer.isDirect) throw invalid("$what is not a direct buffer (allocate it with ByteBuffer.allocateDirect)")
        val order = when (buffer) {
            is FloatBuffer -> buffer.order()
            else -> ByteOrder.nativeOrder()
        }
        if (order != ByteOrder.nativeOrder()) {
            throw invalid("$what is in $order byte order; the runtime reads native order: make it with " +
                "ByteBuffer.allocateDirect(n).order(ByteOrder.nativeOrder()).asFloatBuffer()")
        }
    }

    private fun checkFloats(have: Int, expected: Int, what: String, which: String) {
        if (have != expected) {
            throw DynexportException(DynexportStatus.WRONG_BUFFER_SIZE,
                "step: $what has $have floats $which, the session takes $expected (" +
                    "${if (what == "input") info.inputShape.joinToString("x") else info.outputShape.joinToString("x")})")
        }
    }

    private fun checkStats(stats: FrameStats?) {
        if (stats != null && (stats.layerCount != info.layerCount || stats.segmentCount != info.segmentCount)) {
            throw invalid("step: FrameStats for ${stats.layerCount} layers / ${stats.segmentCount} segments, the " +
                "session has ${info.layerCount} / ${info.segmentCount} (make it with session.newFrameStats())")
        }
    }

    companion object {
        /** The backends compiled into the native library ("executorch", ...). */
        @JvmStatic
        val compiledBackends: List<String>
            get() = NativeBridge.compiledBackends().split(',').filter { it.isNotEmpty() }

        /** dynrt_status_string: the native library's one-line description of a status code. */
        @JvmStatic
        fun statusString(code: Int): String = NativeBridge.statusString(code)

        /**
         * Routes each backend library's log to stderr (verbose: its info lines too, else errors
         * only), as the native driver does; once per process, before the first open. Without
         * it each library logs its own default way (e.g. logcat on Android).
         */
        @JvmStatic
        fun setUpLogging(verbose: Boolean) = NativeBridge.setUpLogging(verbose)

        /**
         * Opens a `dynexport build` output folder: its manifest.json names the plan and the
         * backends; [backend] (default: the build's first) picks one, whose artifact file is
         * found as [BuildFolder] says. [threads]: the backend's threads, 0 = its default.
         */
        @JvmStatic
        @JvmOverloads
        fun open(buildFolder: File, backend: String? = null, threads: Int = 0): DynexportSession {
            val folder = BuildFolder.read(buildFolder)
            val chosen = backend ?: folder.backends.first()
            return open(folder.plan, folder.artifact(chosen), chosen, threads)
        }

        /** Opens a plan file and its backend's artifact file (memory-mapped, read in place). */
        @JvmStatic
        @JvmOverloads
        fun open(plan: File, artifact: File, backend: String, threads: Int = 0): DynexportSession {
            val planBytes = map(plan, "plan")
            val artifactBytes = map(artifact, "$backend artifact")
            return openBuffers(planBytes, artifactBytes, backend, threads, artifactInPlace = true)
        }

        /**
         * Opens from bytes (e.g. read from an app's assets): [plan] and [artifact] from their
         * positions to their limits. The plan is copied. A direct [artifact] is read in place
         * by the backend and must not change while the session is open (the session keeps a
         * reference to it); a heap buffer is copied once.
         */
        @JvmStatic
        @JvmOverloads
        fun open(plan: ByteBuffer, artifact: ByteBuffer, backend: String, threads: Int = 0): DynexportSession =
            openBuffers(plan, artifact, backend, threads, artifactInPlace = artifact.isDirect)

        private fun openBuffers(
            plan: ByteBuffer, artifact: ByteBuffer, backend: String, threads: Int, artifactInPlace: Boolean,
        ): DynexportSession {
            val planDirect = toDirect(plan)
            val artifactDirect = if (artifact.isDirect) artifact else toDirect(artifact)
            if (planDirect.remaining() == 0) throw invalid("the plan is empty")
            if (artifactDirect.remaining() == 0) throw invalid("the $backend artifact is empty")
            val handle = NativeBridge.open(
                backend, planDirect, planDirect.position().toLong(), planDirect.remaining().toLong(),
                artifactDirect, artifactDirect.position().toLong(), artifactDirect.remaining().toLong(),
                artifactInPlace, threads,
            )
            return try {
                DynexportSession(handle, backend, threads, if (artifactInPlace) artifactDirect else null)
            } catch (error: Throwable) {
                NativeBridge.close(handle)
                throw error
            }
        }

        private fun toDirect(buffer: ByteBuffer): ByteBuffer {
            if (buffer.isDirect) return buffer
            val copy = ByteBuffer.allocateDirect(buffer.remaining())
            copy.put(buffer.duplicate()).flip()
            return copy
        }

        private fun map(file: File, what: String): ByteBuffer = try {
            RandomAccessFile(file, "r").use { it.channel.map(FileChannel.MapMode.READ_ONLY, 0, it.length()) }
        } catch (error: IOException) {
            throw invalid("cannot read the $what $file: ${error.message}")
        }

        private const val ALIGNMENT = 64  // bytes: a cache line, and what the native driver's buffers have

        /**
         * [count] floats, direct and in native order, from a 64-byte aligned address. allocateDirect
         * aligns to 8 or 16 bytes only, and ByteBuffer.alignedSlice / alignmentOffset are Java 9 and
         * Android API 33 (minSdk is 26): so the buffer has ALIGNMENT - 1 bytes of slack and is sliced
         * at the offset the JNI layer's address of it gives, on every API level.
         */
        internal fun alignedFloats(count: Int): FloatBuffer {
            val bytes = count * 4
            val raw = ByteBuffer.allocateDirect(bytes + ALIGNMENT - 1)
            val offset = ((ALIGNMENT - NativeBridge.directAddress(raw) % ALIGNMENT) % ALIGNMENT).toInt()
            // through Buffer: ByteBuffer's own position(Int)/limit(Int) (covariant) are not on older Android
            (raw as java.nio.Buffer).position(offset)
            (raw as java.nio.Buffer).limit(offset + bytes)
            return raw.slice().order(ByteOrder.nativeOrder()).asFloatBuffer()
        }

        private fun invalid(message: String) = DynexportException(DynexportStatus.INVALID_ARGUMENT, message)
    }

    private fun invalid(message: String) = DynexportException(DynexportStatus.INVALID_ARGUMENT, message)
}
