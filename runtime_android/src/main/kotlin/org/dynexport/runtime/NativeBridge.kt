package org.dynexport.runtime

import java.nio.Buffer
import java.nio.ByteBuffer

/**
 * The JNI functions of libdynexport_jni (src/main/cpp/dynexport_jni.cpp), one per dynrt.h
 * call; they throw [DynexportException] on failure. Only [DynexportSession] calls them.
 *
 * The library is found by System.loadLibrary("dynexport_jni") (an app's jniLibs, or
 * -Djava.library.path on the JVM), or at the absolute path of the system property
 * `dynexport.jni.library` when it is set.
 */
internal object NativeBridge {
    init {
        val path = System.getProperty("dynexport.jni.library")
        if (path.isNullOrEmpty()) System.loadLibrary("dynexport_jni") else System.load(path)
    }

    @JvmStatic external fun compiledBackends(): String
    @JvmStatic external fun statusString(code: Int): String
    @JvmStatic external fun setUpLogging(verbose: Boolean)

    @JvmStatic external fun open(
        backend: String, plan: ByteBuffer, planOffset: Long, planLength: Long,
        artifact: ByteBuffer, artifactOffset: Long, artifactLength: Long, artifactInPlace: Boolean, threads: Int,
    ): Long

    @JvmStatic external fun close(handle: Long)
    @JvmStatic external fun describe(handle: Long, ints: IntArray, longs: LongArray)
    @JvmStatic external fun threadCount(handle: Long, asked: Int): Int

    @JvmStatic external fun stepDirect(
        handle: Long, input: Buffer, inputOffset: Long, inputBytes: Long, output: Buffer, outputOffset: Long,
        outputBytes: Long, layersAddress: Long, segmentsAddress: Long, scalarsAddress: Long, layerCount: Int,
        segmentCount: Int,
    )

    /** A direct buffer's native address (FrameStats takes its own buffers' once). */
    @JvmStatic external fun directAddress(buffer: Buffer): Long

    @JvmStatic external fun stepArrays(
        handle: Long, input: FloatArray, inputOffset: Int, inputLength: Int, output: FloatArray, outputOffset: Int,
        outputLength: Int, layersAddress: Long, segmentsAddress: Long, scalarsAddress: Long, layerCount: Int,
        segmentCount: Int,
    )

    @JvmStatic external fun reset(handle: Long)
    @JvmStatic external fun describeLayer(handle: Long, layer: Int, ints: IntArray): String

    @JvmStatic external fun layerDecisions(
        handle: Long, layer: Int, mask: ByteBuffer?, maskOffset: Long, maskCapacity: Long,
        channels: ByteBuffer?, channelOffset: Long, channelCapacity: Long,
    )

    @JvmStatic external fun setTieDecisions(handle: Long, layer: Int, mask: ByteBuffer, offset: Long, blocks: Long)
    @JvmStatic external fun timeSegment(handle: Long, segment: Int, batch: Int): Long
}
