package org.dynexport.runtime

/**
 * The one exception of the API: a dynrt call failed, or an argument was refused before the
 * call. [code] is the dynrt status code (dynrt_status.def); [status] the matching
 * [DynexportStatus], or null for a code newer than this API. The message names what failed
 * and why, with the runtime's own reason (dynrt_session_last_error or the constructor's).
 */
class DynexportException(val code: Int, message: String) : RuntimeException(message) {
    constructor(status: DynexportStatus, message: String) : this(status.code, message)

    val status: DynexportStatus? get() = DynexportStatus.fromCode(code)
}
