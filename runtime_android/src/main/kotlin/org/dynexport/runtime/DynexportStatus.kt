package org.dynexport.runtime

/**
 * The dynrt status codes: dynexport/runtime/include/dynrt_status.def, row for row (same names,
 * codes and descriptions; tests/runtime_android/test_kotlin_status.py checks this file against
 * the table, and the JUnit tests check every description against the native library's
 * dynrt_status_string). Codes are in ranges: 0 ok; 1xx arguments; 2xx plan; 3xx input frames;
 * 4xx backend; 5xx resources. Add rows when the table grows; never renumber.
 */
enum class DynexportStatus(val code: Int, val description: String) {
    OK(0, "ok"),
    INVALID_ARGUMENT(100, "invalid argument"),
    WRONG_BUFFER_SIZE(101, "wrong buffer size"),
    PLAN_TRUNCATED(200, "plan truncated"),
    PLAN_BAD_MAGIC(201, "not a dynexport plan (bad magic)"),
    PLAN_VERSION(202, "unsupported plan format version"),
    PLAN_CHECKSUM(203, "plan checksum mismatch"),
    PLAN_INVALID(204, "invalid plan"),
    ARTIFACT_MISMATCH(205, "backend artifact does not match the plan"),
    NONFINITE_INPUT(300, "input frame contains NaN or Inf"),
    BACKEND_ERROR(400, "backend error"),
    SEGMENT_MISMATCH(401, "backend segment signature does not match the plan"),
    OUT_OF_MEMORY(500, "out of memory");

    companion object {
        /** The status with this code, or null for a code this version of the API does not know. */
        @JvmStatic
        fun fromCode(code: Int): DynexportStatus? = entries.firstOrNull { it.code == code }
    }
}
