// The one error type of the Swift API: a dynrt status code and the runtime's message.
//
// DynexportStatus mirrors dynexport/runtime/include/dynrt_status.def case for case (same
// names in lowerCamelCase, same codes); tests/test_runtime_ios.py checks it against the table.

import DynrtCore

public enum DynexportStatus: Int32, CustomStringConvertible {
    case ok = 0
    case invalidArgument = 100
    case wrongBufferSize = 101
    case planTruncated = 200
    case planBadMagic = 201
    case planVersion = 202
    case planChecksum = 203
    case planInvalid = 204
    case artifactMismatch = 205
    case nonfiniteInput = 300
    case backendError = 400
    case segmentMismatch = 401
    case outOfMemory = 500

    /// The runtime's one-line description ("plan checksum mismatch").
    public var description: String {
        String(cString: dynrt_status_string(dynrt_status(rawValue: UInt32(bitPattern: rawValue))))
    }
}

public struct DynexportError: Error, CustomStringConvertible {
    /// The status of the failed call (`.invalidArgument` for a build folder that does not
    /// open: a missing file, a bad manifest, a checksum that differs); `nil` only for a code
    /// this enum does not know (a newer runtime).
    public let status: DynexportStatus?
    /// The raw status code (kept when a newer runtime returns a code this enum lacks).
    public let code: Int32
    public let message: String

    init(code: Int32, message: String) {
        self.code = code
        self.status = DynexportStatus(rawValue: code)
        self.message = message
    }

    init(_ status: dynrt_status, message: String) {
        self.init(code: Int32(bitPattern: status.rawValue), message: message)
    }

    /// A build folder problem found in Swift (manifest, checksum, missing file).
    static func folder(_ message: String) -> DynexportError {
        DynexportError(code: DynexportStatus.invalidArgument.rawValue, message: message)
    }

    public var description: String {
        "dynexport: \(message) (status \(code)\(status.map { ", \($0)" } ?? ""))"
    }
}
