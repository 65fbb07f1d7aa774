package org.dynexport.runtime

import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertArrayEquals
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNotEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.BeforeEach
import org.junit.jupiter.api.Test
import kotlin.test.assertFailsWith
import java.io.File
import java.lang.management.ManagementFactory
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.FloatBuffer

/**
 * The Kotlin API on the host JVM, through libdynexport_jni, the C runtime and a real backend,
 * over a small `dynexport build` folder given as the system property `dynexport.test.build`
 * (tests/runtime_android/test_jvm.py builds one and runs these with the JUnit console launcher,
 * under -Xcheck:jni).
 */
class DynexportSessionTest {
    private val build = File(System.getProperty("dynexport.test.build") ?: error("set -Ddynexport.test.build=OUT"))
    private val opened = ArrayList<DynexportSession>()

    private fun open(): DynexportSession = DynexportSession.open(build, threads = 1).also { opened.add(it) }

    @BeforeEach
    fun quietLogs() = DynexportSession.setUpLogging(false)

    @AfterEach
    fun closeAll() = opened.forEach { it.close() }

    /** Frame t of a clip: a fixed texture with a bright square moving across it, values in [0, 1]. */
    private fun frame(info: SessionInfo, t: Int, into: FloatArray = FloatArray(info.inputFloats)): FloatArray {
        val (h, w, c) = Triple(info.inputShape[1], info.inputShape[2], info.inputShape[3])
        for (y in 0 until h) for (x in 0 until w) for (k in 0 until c) {
            val square = x in (2 * t) % w until (2 * t) % w + 5 && y in 3 until 9
            into[(y * w + x) * c + k] = if (square) 1f else ((x * 7 + y * 13 + k * 5) % 17) / 17f
        }
        return into
    }

    private fun FloatBuffer.fill(values: FloatArray): FloatBuffer = apply { clear(); put(values); clear() }
    private fun FloatBuffer.toArray(): FloatArray = FloatArray(remaining()).also { duplicate().get(it) }

    @Test
    fun `status enum is the native library's table`() {
        for (status in DynexportStatus.entries) {
            assertEquals(status.description, DynexportSession.statusString(status.code), "status ${status.name}")
            assertEquals(status, DynexportStatus.fromCode(status.code))
        }
        assertEquals(DynexportStatus.entries.size, DynexportStatus.entries.map { it.code }.toSet().size)
    }

    @Test
    fun `the build's backend is compiled in and the session describes itself`() {
        assertTrue("executorch" in DynexportSession.compiledBackends, DynexportSession.compiledBackends.toString())
        val session = open()
        val info = session.info
        assertEquals(4, info.inputShape.size)
        assertEquals(1, info.inputShape[0])
        assertEquals(info.inputShape.fold(1L) { a, d -> a * d } * 4, info.inputBytes)
        assertTrue(info.layerCount > 0 && info.segmentCount > 0 && info.stateBytes > 0 && info.arenaBytes > 0)
        val layer = session.layer(0)
        assertEquals(layer.blockRows * layer.blockCols, layer.blocks)
        assertTrue(layer.name.isNotEmpty())
        assertEquals(1, session.threadCount)
    }

    @Test
    fun `direct buffers and float arrays give the same outputs, bit for bit`() {
        val a = open()
        val b = open()
        val input = a.newInputBuffer()
        val output = a.newOutputBuffer()
        val array = FloatArray(a.info.outputFloats)
        for (t in 0 until 6) {
            val values = frame(a.info, t)
            a.step(input.fill(values), output)
            b.step(values, array)
            assertArrayEquals(output.toArray(), array, "frame $t")
        }
    }

    @Test
    fun `stats are filled in place and the gates skip work`() {
        val session = open()
        val stats = session.newFrameStats()
        val output = FloatArray(session.info.outputFloats)
        session.step(frame(session.info, 0), output, stats)
        assertTrue(stats.frameNs > 0 && stats.segmentsNs in 1..stats.frameNs)
        for (l in 0 until stats.layerCount) {
            assertEquals(session.layer(l).blocks, stats.totalBlocks(l))
            assertEquals(LayerPath.DENSE, stats.path(l), "the first frame is dense")
            assertTrue(stats.denseMacs(l) > 0)
        }
        session.step(frame(session.info, 0), output, stats) // the same frame again: nothing changed
        assertEquals(0, stats.activeBlocks(0))
        assertEquals(LayerPath.REUSE, stats.path(0))
        assertTrue(stats.executedMacs(0) < stats.denseMacs(0))
    }

    @Test
    fun `new input and output buffers start at a 64-byte aligned address`() {
        val session = open()
        // several of each: a lone allocation can be aligned by chance (direct buffers are 8- or 16-byte aligned)
        repeat(16) {
            val input = session.newInputBuffer()
            val output = session.newOutputBuffer()
            for ((buffer, floats) in listOf(input to session.info.inputFloats, output to session.info.outputFloats)) {
                assertEquals(0L, NativeBridge.directAddress(buffer) % 64, "address ${NativeBridge.directAddress(buffer)}")
                assertTrue(buffer.isDirect)
                assertEquals(ByteOrder.nativeOrder(), buffer.order())
                assertEquals(floats, buffer.capacity())
                assertEquals(0, buffer.position())
                assertEquals(floats, buffer.limit())
            }
        }
    }

    @Test
    fun `a step allocates nothing on the JVM heap`() {
        val session = open()
        val input = session.newInputBuffer()
        val output = session.newOutputBuffer()
        val arrayOut = FloatArray(session.info.outputFloats)
        val stats = session.newFrameStats()
        val frames = Array(4) { frame(session.info, it) }
        val buffers = Array(4) { session.newInputBuffer().fill(frames[it]) }
        val mask = ByteBuffer.allocateDirect(session.layer(0).blocks)
        val threads = ManagementFactory.getThreadMXBean() as com.sun.management.ThreadMXBean
        // warm up every call once: the first call of each links its native method and loads classes
        // (a few hundred bytes, once); from then on nothing is allocated
        repeat(30) { t ->
            session.step(buffers[t % 4], output, stats)
            session.step(frames[t % 4], arrayOut, stats)
            session.layerDecisions(0, mask, null)
            session.reset()
        }
        val before = threads.currentThreadAllocatedBytes
        for (t in 0 until 200) {
            session.step(buffers[t % 4], output, stats)
            session.step(frames[t % 4], arrayOut, stats)
            session.layerDecisions(0, mask, null)
            if (t % 50 == 0) session.reset()
        }
        val allocated = threads.currentThreadAllocatedBytes - before
        assertEquals(0L, allocated, "bytes allocated by 400 steps")
        assertFalse(input.isReadOnly)
    }

    @Test
    fun `a frame with NaN is refused with its status and changes no state`() {
        val a = open()
        val b = open()
        val out = FloatArray(a.info.outputFloats)
        val expected = FloatArray(a.info.outputFloats)
        a.step(frame(a.info, 0), out)
        b.step(frame(b.info, 0), expected)
        val bad = frame(a.info, 1).also { it[it.size / 2] = Float.NaN }
        val error = assertFailsWith<DynexportException> { a.step(bad, out) }
        assertEquals(DynexportStatus.NONFINITE_INPUT, error.status)
        assertEquals(300, error.code)
        assertTrue("NaN" in error.message!!, error.message)
        a.step(frame(a.info, 1), out)
        b.step(frame(b.info, 1), expected)
        assertArrayEquals(expected, out)
    }

    @Test
    fun `reset makes the next frame as after open`() {
        val a = open()
        val fresh = open()
        val out = FloatArray(a.info.outputFloats)
        val expected = FloatArray(a.info.outputFloats)
        for (t in 0 until 3) a.step(frame(a.info, t), out)
        a.reset()
        a.step(frame(a.info, 7), out)
        fresh.step(frame(a.info, 7), expected)
        assertArrayEquals(expected, out)
    }

    @Test
    fun `wrong buffers are refused, naming what was expected`() {
        val session = open()
        val info = session.info
        val small = assertFailsWith<DynexportException> { session.step(FloatArray(3), FloatArray(info.outputFloats)) }
        assertEquals(DynexportStatus.WRONG_BUFFER_SIZE, small.status)
        assertTrue("${info.inputFloats}" in small.message!!, small.message)
        val heap = assertFailsWith<DynexportException> {
            session.step(FloatBuffer.allocate(info.inputFloats), session.newOutputBuffer())
        }
        assertEquals(DynexportStatus.INVALID_ARGUMENT, heap.status)
        assertTrue("direct" in heap.message!!)
        val bigEndian = ByteBuffer.allocateDirect(info.inputBytes.toInt()).order(ByteOrder.BIG_ENDIAN).asFloatBuffer()
        if (ByteOrder.nativeOrder() != ByteOrder.BIG_ENDIAN) {
            val order = assertFailsWith<DynexportException> { session.step(bigEndian, session.newOutputBuffer()) }
            assertTrue("nativeOrder" in order.message!!, order.message)
        }
        val otherStats = FrameStats(info.layerCount + 1, info.segmentCount)
        assertFailsWith<DynexportException> { session.step(frame(info, 0), FloatArray(info.outputFloats), otherStats) }
        val layer = assertFailsWith<DynexportException> { session.layer(info.layerCount) }
        assertEquals(DynexportStatus.INVALID_ARGUMENT, layer.status)
    }

    @Test
    fun `a closed session says so and close is idempotent`() {
        val session = open()
        session.close()
        session.close()
        assertTrue(session.isClosed)
        val error = assertFailsWith<DynexportException> { session.reset() }
        assertEquals(DynexportStatus.INVALID_ARGUMENT, error.status)
        assertTrue("closed" in error.message!!)
    }

    @Test
    fun `bytes open like files, and a damaged plan or a foreign artifact is refused`() {
        val folder = BuildFolder.read(build)
        val planBytes = folder.plan.readBytes()
        val artifactBytes = folder.artifact("executorch").readBytes()
        val fromFiles = open()
        val fromHeap = DynexportSession.open(ByteBuffer.wrap(planBytes), ByteBuffer.wrap(artifactBytes), "executorch", 1)
            .also { opened.add(it) }
        val direct = ByteBuffer.allocateDirect(artifactBytes.size).put(artifactBytes).flip() as ByteBuffer
        val fromDirect = DynexportSession.open(ByteBuffer.wrap(planBytes), direct, "executorch", 1).also { opened.add(it) }
        val (x, y, z) = Triple(FloatArray(fromFiles.info.outputFloats), FloatArray(fromFiles.info.outputFloats),
            FloatArray(fromFiles.info.outputFloats))
        for (t in 0 until 3) {
            fromFiles.step(frame(fromFiles.info, t), x)
            fromHeap.step(frame(fromFiles.info, t), y)
            fromDirect.step(frame(fromFiles.info, t), z)
            assertArrayEquals(x, y)
            assertArrayEquals(x, z)
        }
        val damaged = planBytes.copyOf().also { it[it.size - 1] = (it[it.size - 1] + 1).toByte() }
        val checksum = assertFailsWith<DynexportException> {
            DynexportSession.open(ByteBuffer.wrap(damaged), ByteBuffer.wrap(artifactBytes), "executorch")
        }
        assertEquals(DynexportStatus.PLAN_CHECKSUM, checksum.status, checksum.message)
        val notAPlan = assertFailsWith<DynexportException> {
            DynexportSession.open(ByteBuffer.wrap(ByteArray(64) { 7 }), ByteBuffer.wrap(artifactBytes), "executorch")
        }
        assertNotEquals(DynexportStatus.OK, notAPlan.status)
        assertTrue(notAPlan.code / 100 == 2, notAPlan.message)
        val foreign = artifactBytes.copyOf().also { it[it.size / 2] = (it[it.size / 2] + 1).toByte() }
        val mismatch = assertFailsWith<DynexportException> {
            DynexportSession.open(ByteBuffer.wrap(planBytes), ByteBuffer.wrap(foreign), "executorch")
        }
        assertEquals(DynexportStatus.ARTIFACT_MISMATCH, mismatch.status, mismatch.message)
        val unknown = assertFailsWith<DynexportException> {
            DynexportSession.open(ByteBuffer.wrap(planBytes), ByteBuffer.wrap(artifactBytes), "no-such-backend")
        }
        assertTrue("not compiled into" in unknown.message!!, unknown.message)
    }

    @Test
    fun `a folder that is not a build is named`() {
        val error = assertFailsWith<DynexportException> { DynexportSession.open(File(build, "no-such-folder")) }
        assertEquals(DynexportStatus.INVALID_ARGUMENT, error.status)
        assertTrue("manifest.json" in error.message!!, error.message)
    }

    @Test
    fun `the manifest reader reads JSON`() {
        val value = Json("""{"a": [1, 2.5e1, -3], "b": {"c": "x\"y\u00e9"}, "d": true, "e": null}""").document()
        assertEquals(mapOf("a" to listOf(1.0, 25.0, -3.0), "b" to mapOf("c" to "x\"yé"), "d" to true, "e" to null), value)
        assertFailsWith<IllegalArgumentException> { Json("""{"a": }""").document() }
        assertFailsWith<IllegalArgumentException> { Json("""[1, 2] x""").document() }
    }
}
