package org.dynexport.runtime.verify

import org.dynexport.runtime.DynexportException
import org.dynexport.runtime.DynexportSession
import org.dynexport.runtime.FrameStats
import java.io.File
import java.io.IOException
import java.io.RandomAccessFile
import java.lang.management.ManagementFactory
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.channels.FileChannel
import kotlin.system.exitProcess

/*
 * The verify driver on the JVM: the native driver's verify mode
 * (dynexport/runtime/driver/dynrt_driver.cpp) through the Kotlin API, for
 * `dynexport verify OUT --device jvm` (JNI -> C runtime -> backend). Same options, same input
 * files and same output files (frames.bin, outputs.bin, decisions.bin, ties.bin,
 * stats.jsonl, as that source describes them), same summary line with a few more fields:
 *
 *   median_wall_ns, mean_wall_ns   step() as the app calls it (System.nanoTime around it),
 *                                  next to frame_ns (measured inside dynrt_session_step)
 *   api_allocated_bytes            bytes this thread allocated on the JVM heap inside the
 *                                  API calls of the timed frames (ties, step, decisions),
 *                                  from com.sun.management.ThreadMXBean: 0 = none per frame
 *
 * Bench, tune and --shared-sessions-check modes are the native driver's alone (exit 2).
 * Exit codes: 0 ok, 2 bad arguments or files, 3 a runtime status error.
 */

private const val EXIT_USAGE = 2
private const val EXIT_STATUS = 3
private const val USAGE =
    "usage: dynexport-jvm-verify --backend NAME --plan plan.dxfp --artifact ARTIFACT --frames frames.bin " +
        "--outputs outputs.bin\n" +
        "         [--decisions decisions.bin] [--tie-decisions ties.bin] [--reset-frames 0,17,...]\n" +
        "         [--stats stats.jsonl] [--threads N] [--repeat R] [--warmup W] [--verbose]\n"

private class Failure(val code: Int, message: String) : Exception(message)

private class Options {
    val files = HashMap<String, String>()
    var resets = LongArray(0)
    var threads = 0
    var repeat = 1
    var warmup = 1
    var verbose = false
}

private val FILE_FLAGS = setOf("backend", "plan", "artifact", "frames", "outputs", "decisions", "tie-decisions", "stats")
private val NATIVE_ONLY = setOf("dense-plan", "dense-artifact", "dense-outputs", "tune-segments", "rounds", "seed",
    "copy-bytes", "shared-sessions-check")

private fun parse(args: Array<String>): Options {
    val options = Options()
    var i = 0
    while (i < args.size) {
        var flag = args[i]
        var value: String?
        if (flag == "-h" || flag == "--help") { print(USAGE); exitProcess(0) }
        if (flag == "--verbose") { options.verbose = true; i++; continue }
        if (!flag.startsWith("--")) throw Failure(EXIT_USAGE, "unexpected argument $flag\n$USAGE")
        val equals = flag.indexOf('=')
        if (equals >= 0) { value = flag.substring(equals + 1); flag = flag.substring(0, equals) }
        else if (flag.removePrefix("--") in NATIVE_ONLY && flag == "--shared-sessions-check") value = ""
        else { value = args.getOrNull(i + 1) ?: throw Failure(EXIT_USAGE, "$flag needs a value\n$USAGE"); i++ }
        i++
        val name = flag.removePrefix("--")
        fun count(min: Int): Int = value.toIntOrNull()?.takeIf { it >= min }
            ?: throw Failure(EXIT_USAGE, "$flag $value: expected a count >= $min")
        when {
            name in FILE_FLAGS -> options.files[name] = value
            name in NATIVE_ONLY -> throw Failure(EXIT_USAGE,
                "$flag: the JVM driver runs verify mode only; bench, tune and the shared-sessions check run on " +
                    "the native driver (--device host)")
            name == "threads" -> options.threads = count(0)
            name == "repeat" -> options.repeat = count(1)
            name == "warmup" -> options.warmup = count(0)
            name == "reset-frames" -> options.resets = value.split(',').filter { it.isNotEmpty() }.map {
                it.toLongOrNull()?.takeIf { n -> n >= 0 }
                    ?: throw Failure(EXIT_USAGE, "--reset-frames $value: '$it' is not a frame index")
            }.sorted().toLongArray()
            else -> throw Failure(EXIT_USAGE, "unknown option $flag\n$USAGE")
        }
    }
    for (required in listOf("plan", "artifact", "frames", "outputs", "backend")) {
        if (required !in options.files) throw Failure(EXIT_USAGE, "missing --$required\n$USAGE")
    }
    return options
}

private fun open(path: String, mode: String, what: String): FileChannel = try {
    if (mode == "w") File(path).outputStream().channel else RandomAccessFile(path, "r").channel
} catch (error: IOException) {
    throw Failure(EXIT_USAGE, "cannot open $what $path: ${error.message}")
}

private fun readFully(channel: FileChannel, buffer: ByteBuffer, path: String) {
    buffer.clear()
    while (buffer.hasRemaining()) if (channel.read(buffer) < 0) throw Failure(EXIT_USAGE, "cannot read $path")
    buffer.flip()
}

private fun writeFully(channel: FileChannel, buffer: ByteBuffer) {
    buffer.rewind()
    while (buffer.hasRemaining()) channel.write(buffer)
}

private fun median(values: LongArray): Long = values.sortedArray()[values.size / 2]

private fun pathName(code: Int) = when (code) { 0 -> "reuse"; 1 -> "tiles"; 2 -> "dense"; else -> "unknown" }

private fun statsLine(out: StringBuilder, pass: Int, frame: Long, stats: FrameStats, wallNs: Long) {
    out.append("{\"pass\": ").append(pass).append(", \"frame\": ").append(frame)
        .append(", \"frame_ns\": ").append(stats.frameNs).append(", \"wall_ns\": ").append(wallNs)
        .append(", \"segments_ns\": ").append(stats.segmentsNs).append(", \"segments_reused\": ")
        .append(stats.segmentsReused).append(", \"layers\": [")
    for (l in 0 until stats.layerCount) {
        if (l > 0) out.append(", ")
        out.append("{\"active\": ").append(stats.activeBlocks(l)).append(", \"total\": ").append(stats.totalBlocks(l))
            .append(", \"path\": \"").append(pathName(stats.pathCode(l))).append("\", \"ties\": ").append(stats.ties(l))
            .append(", \"executed_macs\": ").append(stats.executedMacs(l))
            .append(", \"dense_macs\": ").append(stats.denseMacs(l)).append('}')
    }
    out.append("], \"segment_ns\": [")
    for (s in 0 until stats.segmentCount) out.append(if (s > 0) ", " else "").append(stats.segmentNs(s))
    out.append("]}\n")
}

private fun run(options: Options): Int {
    val files = options.files
    val backend = files.getValue("backend")
    if (backend !in DynexportSession.compiledBackends) {
        throw Failure(EXIT_USAGE, "--backend $backend: not compiled into libdynexport_jni (it has: " +
            "${DynexportSession.compiledBackends.joinToString()}); build runtime_android with that backend's adapter")
    }
    DynexportSession.setUpLogging(options.verbose)
    DynexportSession.open(File(files.getValue("plan")), File(files.getValue("artifact")), backend, options.threads)
        .use { session -> return stream(session, options) }
}

private fun stream(session: DynexportSession, options: Options): Int {
    val files = options.files
    val info = session.info
    val framesPath = files.getValue("frames")
    val frames = open(framesPath, "r", "frames")
    val size = frames.size()
    if (size == 0L || size % info.inputBytes != 0L) {
        throw Failure(EXIT_USAGE, "frames $framesPath: $size bytes is not a whole number of frames of " +
            "${info.inputBytes} bytes (float32 NHWC ${info.inputShape.joinToString("x")}); " +
            "${size / info.inputBytes} frames and ${size % info.inputBytes} bytes left over")
    }
    val frameCount = size / info.inputBytes
    options.resets.firstOrNull { it >= frameCount }?.let {
        throw Failure(EXIT_USAGE, "--reset-frames: frame $it is past the clip's $frameCount frames")
    }
    val layers = (0 until info.layerCount).map { session.layer(it) }
    val blocksPerFrame = layers.sumOf { it.blocks }
    val ties = files["tie-decisions"]?.let { path ->
        open(path, "r", "tie decisions").also {
            if (it.size() != frameCount * blocksPerFrame) {
                throw Failure(EXIT_USAGE, "tie decisions $path: ${it.size()} bytes, expected " +
                    "${frameCount * blocksPerFrame} ($frameCount frames x $blocksPerFrame blocks)")
            }
        }
    }
    val outputs = open(files.getValue("outputs"), "w", "outputs")
    val decisions = files["decisions"]?.let { open(it, "w", "decisions") }
    val statsFile = files["stats"]?.let { File(it).bufferedWriter() }

    // Everything the loop touches, allocated now.
    // 64-byte aligned, as the native driver's buffers are (so that the two time the same memory layout)
    fun direct(bytes: Long): ByteBuffer {
        val size = maxOf(1L, bytes).toInt()
        // alignedSlice also rounds the end down to a multiple of 64: allocate whole 64-byte units, plus one
        val units = (size + 63) / 64
        return ByteBuffer.allocateDirect(units * 64 + 64).alignedSlice(64).limit(size).slice()
            .order(ByteOrder.nativeOrder())
    }
    val frameBytes = direct(info.inputBytes)
    val outputBytes = direct(info.outputBytes)
    val input = frameBytes.asFloatBuffer()
    val output = outputBytes.asFloatBuffer()
    val stats = session.newFrameStats()
    val maxBlocks = layers.maxOfOrNull { it.blocks } ?: 1
    val maxChannels = layers.maxOfOrNull { it.outChannels } ?: 1
    val mask = direct(maxBlocks.toLong())
    val channels = direct(maxChannels.toLong())
    val decisionRecord = direct(layers.sumOf { it.blocks + it.outChannels }.toLong())
    val tieMasks = direct(blocksPerFrame.toLong())
    val steps = (frameCount * options.repeat).toInt()
    val frameTimes = LongArray(steps)
    val wallTimes = LongArray(steps)
    var segmentsTotal = 0L
    var allocated = 0L
    val line = StringBuilder()
    val threads = ManagementFactory.getThreadMXBean() as com.sun.management.ThreadMXBean
    fun allocatedNow() = threads.currentThreadAllocatedBytes

    val passes = options.warmup + options.repeat
    for (pass in 0 until passes) {
        val timed = pass >= options.warmup
        val timedPass = if (timed) pass - options.warmup else 0
        val lastPass = pass + 1 == passes
        if (pass > 0) {
            session.reset()
            frames.position(0)
            ties?.position(0)
        }
        var nextReset = 0
        for (t in 0 until frameCount) {
            readFully(frames, frameBytes, framesPath)
            var resetHere = false
            while (nextReset < options.resets.size && options.resets[nextReset] == t) { nextReset++; resetHere = true }
            if (ties != null) readFully(ties, tieMasks, files.getValue("tie-decisions"))
            val before = allocatedNow()
            if (resetHere) session.reset()
            if (ties != null) {
                var offset = 0
                for (l in layers.indices) {
                    tieMasks.position(offset)
                    session.setTieDecisions(l, tieMasks, layers[l].blocks)
                    offset += layers[l].blocks
                }
            }
            val start = System.nanoTime()
            session.step(input, output, stats)
            val wallNs = System.nanoTime() - start
            if (decisions != null) { // read every pass (the same work each frame), written from the last
                decisionRecord.clear()
                for (l in layers.indices) {
                    mask.clear().limit(layers[l].blocks)
                    channels.clear().limit(layers[l].outChannels)
                    session.layerDecisions(l, mask, channels)
                    decisionRecord.put(mask).put(channels)
                }
            }
            val after = allocatedNow()
            if (!timed) continue
            allocated += after - before
            val slot = (timedPass * frameCount + t).toInt()
            frameTimes[slot] = stats.frameNs
            wallTimes[slot] = wallNs
            segmentsTotal += stats.segmentsNs
            if (lastPass) {
                writeFully(outputs, outputBytes)
                if (decisions != null) writeFully(decisions, decisionRecord.flip())
            }
            if (statsFile != null) {
                line.setLength(0)
                statsLine(line, timedPass, t, stats, wallNs)
                statsFile.append(line)
            }
        }
    }
    outputs.close()
    decisions?.close()
    statsFile?.close()
    println("{\"backend\": \"${session.backend}\", \"device\": \"jvm\", \"frames\": $frameCount, " +
        "\"passes\": ${options.repeat}, \"warmup\": ${options.warmup}, \"threads\": ${session.threadCount}, " +
        "\"mean_frame_ns\": ${frameTimes.sum() / steps}, \"median_frame_ns\": ${median(frameTimes)}, " +
        "\"mean_segments_ns\": ${segmentsTotal / steps}, \"arena_bytes\": ${info.arenaBytes}, " +
        "\"state_bytes\": ${info.stateBytes}, \"median_wall_ns\": ${median(wallTimes)}, " +
        "\"mean_wall_ns\": ${wallTimes.sum() / steps}, \"api_allocated_bytes\": $allocated, " +
        "\"jvm\": \"${System.getProperty("java.vm.name")} ${System.getProperty("java.version")}\"}")
    return 0
}

fun main(args: Array<String>) {
    val code = try {
        run(parse(args))
    } catch (failure: Failure) {
        System.err.println("dynexport-jvm-verify: ${failure.message}")
        failure.code
    } catch (error: DynexportException) {
        System.err.println("dynexport-jvm-verify: ${error.message}")
        EXIT_STATUS
    } catch (error: IOException) {
        System.err.println("dynexport-jvm-verify: ${error.message}")
        EXIT_USAGE
    }
    System.out.flush()
    exitProcess(code)
}
