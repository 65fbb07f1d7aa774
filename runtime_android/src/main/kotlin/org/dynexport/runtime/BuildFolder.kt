package org.dynexport.runtime

import java.io.File
import java.io.IOException

/**
 * What [DynexportSession.open] needs from a `dynexport build` output folder, read from its
 * manifest.json: the plan file (`plan.file`), the backends (`backends`) and each backend's
 * artifact file. The artifact file is the manifest's `app.artifacts[backend]` (written by
 * `dynexport build --target android`, dynexport/app_bundle); a build without it (e.g.
 * `--target host`) must have exactly one artifact besides the plan and the reference copy.
 * Every path stays inside the folder.
 */
internal class BuildFolder private constructor(
    val folder: File,
    val plan: File,
    val backends: List<String>,
    private val artifacts: Map<String, String>,
    private val otherFiles: List<String>,
) {
    fun artifact(backend: String): File {
        if (backend !in backends) {
            throw invalid("$folder: backend '$backend' is not in this build (it has ${backends.joinToString()})")
        }
        val name = artifacts[backend] ?: otherFiles.singleOrNull()
            ?: throw invalid("$folder: manifest.json names no artifact file for $backend (no app.artifacts entry) " +
                "and has ${otherFiles.size} candidates (${otherFiles.joinToString()}): open the plan and artifact " +
                "files instead")
        return inside(folder, name)
    }

    companion object {
        fun read(folder: File): BuildFolder {
            val file = File(folder, "manifest.json")
            val text = try {
                file.readText()
            } catch (error: IOException) {
                throw invalid("$folder is not a dynexport build folder: cannot read $file (${error.message})")
            }
            val manifest = try {
                Json(text).document() as? Map<*, *>
            } catch (error: IllegalArgumentException) {
                throw invalid("$file is not valid JSON: ${error.message}")
            } ?: throw invalid("$file: expected a JSON object")
            if ((manifest["format"] as? String)?.startsWith("dynexport-build/") != true) {
                throw invalid("$file: \"format\" is not \"dynexport-build/...\": not a dynexport build")
            }
            val planName = ((manifest["plan"] as? Map<*, *>)?.get("file") as? String)
                ?: throw invalid("$file: no plan.file")
            val backends = (manifest["backends"] as? List<*>)?.filterIsInstance<String>()
            if (backends.isNullOrEmpty()) throw invalid("$file: no backends")
            val app = (manifest["app"] as? Map<*, *>)?.get("artifacts") as? Map<*, *>
            val artifacts = app?.entries?.mapNotNull { (k, v) -> if (k is String && v is String) k to v else null }
                ?.toMap() ?: emptyMap()
            val listed = (manifest["artifacts"] as? Map<*, *>)?.keys?.filterIsInstance<String>() ?: emptyList()
            val reference = (manifest["reference"] as? Map<*, *>)?.get("file") as? String
            val others = listed.filter { it != planName && it != reference && !it.startsWith("reference/") }
            return BuildFolder(folder, inside(folder, planName), backends, artifacts, others)
        }

        private fun inside(folder: File, name: String): File {
            val file = File(folder, name)
            val root = folder.canonicalFile
            if (File(name).isAbsolute || !file.canonicalFile.toPath().startsWith(root.toPath())) {
                throw invalid("$folder/manifest.json names '$name', which is not inside the build folder")
            }
            return file
        }

        private fun invalid(message: String) = DynexportException(DynexportStatus.INVALID_ARGUMENT, message)
    }
}

/** A small JSON reader (objects, arrays, strings, numbers, true/false/null) for manifest.json. */
internal class Json(private val text: String) {
    private var at = 0

    fun document(): Any? {
        val value = value()
        space()
        require(at == text.length) { "trailing characters at offset $at" }
        return value
    }

    private fun value(): Any? {
        space()
        require(at < text.length) { "unexpected end" }
        return when (val c = text[at]) {
            '{' -> objectValue()
            '[' -> arrayValue()
            '"' -> string()
            't' -> literal("true", true)
            'f' -> literal("false", false)
            'n' -> literal("null", null)
            else -> if (c == '-' || c.isDigit()) number() else throw IllegalArgumentException("unexpected '$c' at $at")
        }
    }

    private fun objectValue(): Map<String, Any?> {
        val map = LinkedHashMap<String, Any?>()
        at++
        space()
        if (peek('}')) return map.also { at++ }
        while (true) {
            space()
            require(peek('"')) { "expected a key at $at" }
            val key = string()
            space()
            require(peek(':')) { "expected ':' at $at" }
            at++
            map[key] = value()
            space()
            if (peek(',')) { at++; continue }
            require(peek('}')) { "expected ',' or '}' at $at" }
            at++
            return map
        }
    }

    private fun arrayValue(): List<Any?> {
        val list = ArrayList<Any?>()
        at++
        space()
        if (peek(']')) return list.also { at++ }
        while (true) {
            list.add(value())
            space()
            if (peek(',')) { at++; continue }
            require(peek(']')) { "expected ',' or ']' at $at" }
            at++
            return list
        }
    }

    private fun string(): String {
        val out = StringBuilder()
        at++
        while (true) {
            require(at < text.length) { "unterminated string" }
            val c = text[at++]
            when (c) {
                '"' -> return out.toString()
                '\\' -> {
                    require(at < text.length) { "unterminated escape" }
                    when (val e = text[at++]) {
                        '"', '\\', '/' -> out.append(e)
                        'b' -> out.append('\b')
                        'f' -> out.append('\u000c')
                        'n' -> out.append('\n')
                        'r' -> out.append('\r')
                        't' -> out.append('\t')
                        'u' -> {
                            require(at + 4 <= text.length) { "short \\u escape" }
                            out.append(text.substring(at, at + 4).toInt(16).toChar())
                            at += 4
                        }
                        else -> throw IllegalArgumentException("bad escape \\$e")
                    }
                }
                else -> out.append(c)
            }
        }
    }

    private fun number(): Double {
        val start = at
        while (at < text.length && (text[at].isDigit() || text[at] in "+-.eE")) at++
        return text.substring(start, at).toDoubleOrNull() ?: throw IllegalArgumentException("bad number at $start")
    }

    private fun literal(word: String, value: Any?): Any? {
        require(text.startsWith(word, at)) { "unexpected token at $at" }
        at += word.length
        return value
    }

    private fun peek(c: Char) = at < text.length && text[at] == c
    private fun space() { while (at < text.length && text[at].isWhitespace()) at++ }
}
