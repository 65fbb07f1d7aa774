// DynexportSession: a dynexport build run frame by frame, a thin mapping of the C API
// (dynexport/runtime/include/dynrt.h) and of the two backend constructors
// (dynrt_coreml_backend_create, dynrt_executorch_backend_create_v2).
//
//     let session = try DynexportSession(buildFolder: Bundle.main.url(forResource: "out", withExtension: nil)!)
//     var frame = [Float](repeating: 0, count: session.info.inputCount)    // NHWC float32
//     var result = [Float](repeating: 0, count: session.info.outputCount)
//     for each camera frame { fill frame; try session.step(frame: frame, output: &result) }
//     session.reset()                                                       // scene cut
//
// Invariants: everything is allocated in init; step, reset and the stats' C arrays allocate
// nothing (step passes the caller's buffers straight to dynrt_session_step; building a
// FrameStats value when you read `lastFrameStats` does). One thread at a time per session,
// as the C API says. The session is destroyed before the backend it uses, the backend before
// the artifact bytes it points to.

import CryptoKit
import DynrtCore
import DynrtCoreML
import DynrtExecuTorch
import Foundation

public final class DynexportSession {
    public enum Backend: String, CaseIterable {
        case coreml
        case executorch
    }

    /// Where Core ML may run (ignored by ExecuTorch). An fp32 build runs on the CPU and the GPU;
    /// the Neural Engine computes in fp16 (build with --precision fp16 to use it).
    public enum ComputeUnits: UInt32 {
        case all = 0
        case cpuOnly = 1
        case cpuAndGPU = 2
        case cpuAndNeuralEngine = 3
    }

    public struct Info {
        public let inputShape: [Int]   // physical: [1, H, W, C]
        public let inputCount: Int     // floats in a frame
        public let outputShape: [Int]
        public let outputCount: Int
        public let layerCount: Int
        public let segmentCount: Int
        public let stateBytes: Int
        public let arenaBytes: Int
    }

    public enum LayerPath: UInt32 {
        case reuse = 0, tiles = 1, dense = 2
    }

    public struct LayerStats {
        public let activeBlocks: Int
        public let totalBlocks: Int
        public let path: LayerPath?
        public let ties: Int
        public let executedMacs: UInt64
        public let denseMacs: UInt64
    }

    public struct FrameStats {
        public let frameNanoseconds: UInt64
        public let segmentsNanoseconds: UInt64
        public let segmentsReused: Int
        public let layers: [LayerStats]
    }

    public let info: Info
    public let backend: Backend

    private var session: dynrt_session_t?
    private var backendHandle: dynrt_backend_t?
    private var artifact: UnsafeMutableRawBufferPointer?  // the .pte: ExecuTorch reads it until the backend goes
    private let layers: UnsafeMutableBufferPointer<dynrt_layer_stats>
    private var stats: dynrt_frame_stats

    /// Opens a build folder written by `dynexport build --target ios`: checks the manifest's
    /// SHA-256 of the plan and of the chosen backend's artifact files (`verifyChecksums`), then
    /// creates the backend and the session. `backend` nil: Core ML when the build has it.
    public init(buildFolder: URL, backend: Backend? = nil, computeUnits: ComputeUnits = .all, threads: UInt32 = 0,
                verifyChecksums: Bool = true) throws {
        let folder = try BuildFolder(buildFolder)
        let chosen = try backend ?? folder.defaultBackend()
        guard folder.backends.contains(chosen.rawValue) else {
            throw DynexportError.folder("\(buildFolder.path): the build has no \(chosen.rawValue) artifact "
                                        + "(it has \(folder.backends.joined(separator: ", ")))")
        }
        if verifyChecksums {
            try folder.verify(files: [folder.planFile] + folder.artifactFiles(of: chosen))
        }
        let plan = try folder.read(folder.planFile)
        var why = [CChar](repeating: 0, count: 1024)
        var options = dynrt_backend_options(struct_size: MemoryLayout<dynrt_backend_options>.size, threads: threads)
        var handle: dynrt_backend_t?
        var artifactCopy: UnsafeMutableRawBufferPointer?  // self.artifact once every property is set
        var status: dynrt_status
        switch chosen {
        case .coreml:
            let package = folder.url(BuildFolder.artifactName(of: .coreml))
            status = package.withUnsafeFileSystemRepresentation { path in
                dynrt_coreml_backend_create(path, computeUnits.rawValue, &options, &why, why.count, &handle)
            }
        case .executorch:
            let bytes = try folder.read(BuildFolder.artifactName(of: .executorch))
            // ExecuTorch keeps a pointer to the program and needs it 16-byte aligned: our own copy
            let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 64)
            bytes.copyBytes(to: copy)
            artifactCopy = copy
            status = dynrt_executorch_backend_create_v2(copy.baseAddress, bytes.count, &options, &why, why.count,
                                                        &handle)
        }
        guard status == DYNRT_OK, let handle else {
            artifactCopy?.deallocate()
            throw DynexportError(status, message: "\(chosen.rawValue) backend: \(String(cString: why))")
        }
        var created: dynrt_session_t?
        status = plan.withUnsafeBytes { raw in
            dynrt_session_create(raw.baseAddress, raw.count, handle, &why, why.count, &created)
        }
        guard status == DYNRT_OK, let created else {
            dynrt_backend_destroy(handle)
            artifactCopy?.deallocate()
            throw DynexportError(status, message: "plan: \(String(cString: why))")
        }
        var described = dynrt_session_info()
        _ = dynrt_session_describe(created, &described)
        self.backend = chosen
        self.artifact = artifactCopy
        self.backendHandle = handle
        self.session = created
        self.info = Info(
            inputShape: Self.dims(described.input_dims, rank: described.input_rank),
            inputCount: described.input_bytes / MemoryLayout<Float>.size,
            outputShape: Self.dims(described.output_dims, rank: described.output_rank),
            outputCount: described.output_bytes / MemoryLayout<Float>.size,
            layerCount: Int(described.layer_count), segmentCount: Int(described.segment_count),
            stateBytes: described.state_bytes, arenaBytes: described.arena_bytes)
        layers = UnsafeMutableBufferPointer<dynrt_layer_stats>.allocate(capacity: max(1, Int(described.layer_count)))
        layers.initialize(repeating: dynrt_layer_stats())
        stats = dynrt_frame_stats()
        stats.layers = layers.baseAddress
        stats.layer_capacity = described.layer_count
    }

    deinit {
        close()
        layers.deallocate()
    }

    /// Frees the session, then the backend, then the artifact bytes. Idempotent; any call
    /// after it throws.
    public func close() {
        if let session { dynrt_session_destroy(session) }
        if let backendHandle { dynrt_backend_destroy(backendHandle) }
        artifact?.deallocate()
        session = nil
        backendHandle = nil
        artifact = nil
    }

    /// One frame: `frame` (float32 NHWC, `info.inputCount` values) -> `output`
    /// (`info.outputCount` values). Allocates nothing.
    public func step(frame: UnsafeBufferPointer<Float>, output: UnsafeMutableBufferPointer<Float>) throws {
        let session = try open()
        let status = dynrt_session_step(session, frame.baseAddress, frame.count * MemoryLayout<Float>.size,
                                        output.baseAddress, output.count * MemoryLayout<Float>.size, &stats)
        if status != DYNRT_OK {
            throw DynexportError(status, message: String(cString: dynrt_session_last_error(session)))
        }
    }

    /// `step` on Swift arrays (no copy: their storage is passed as is).
    public func step(frame: [Float], output: inout [Float]) throws {
        try frame.withUnsafeBufferPointer { input in
            try output.withUnsafeMutableBufferPointer { result in
                try step(frame: input, output: result)
            }
        }
    }

    /// Scene cut / keyframe: the next frame is computed densely.
    public func reset() throws {
        let session = try open()
        let status = dynrt_session_reset(session)
        if status != DYNRT_OK {
            throw DynexportError(status, message: String(cString: dynrt_session_last_error(session)))
        }
    }

    /// The statistics of the last step (built when read; the step itself fills C arrays
    /// allocated in init).
    public var lastFrameStats: FrameStats {
        let count = min(Int(stats.layer_capacity), info.layerCount)
        let perLayer = (0..<count).map { i -> LayerStats in
            let layer = layers[i]
            return LayerStats(activeBlocks: Int(layer.active_blocks), totalBlocks: Int(layer.total_blocks),
                              path: LayerPath(rawValue: layer.path), ties: Int(layer.ties),
                              executedMacs: layer.executed_macs, denseMacs: layer.dense_macs)
        }
        return FrameStats(frameNanoseconds: stats.frame_ns, segmentsNanoseconds: stats.segments_ns,
                          segmentsReused: Int(stats.segments_reused), layers: perLayer)
    }

    private func open() throws -> dynrt_session_t {
        guard let session else {
            throw DynexportError(DYNRT_INVALID_ARGUMENT, message: "the session was closed")
        }
        return session
    }

    private static func dims(_ tuple: (UInt32, UInt32, UInt32, UInt32), rank: UInt32) -> [Int] {
        let all = [tuple.0, tuple.1, tuple.2, tuple.3]
        return all.prefix(Int(min(rank, 4))).map { Int($0) }
    }
}

/// A build folder's manifest, read and checked the way `dynexport verify` reads it: every
/// file named is a relative path inside the folder, and its SHA-256 is the manifest's.
struct BuildFolder {
    let root: URL
    let backends: [String]
    let planFile: String
    let artifacts: [String: String]  // relative path -> SHA-256 hex

    static func artifactName(of backend: DynexportSession.Backend) -> String {
        switch backend {
        case .coreml: return "model.mlpackage"
        case .executorch: return "model.pte"
        }
    }

    init(_ root: URL) throws {
        self.root = root
        let manifestURL = root.appendingPathComponent("manifest.json")
        guard let data = try? Data(contentsOf: manifestURL),
              let manifest = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw DynexportError.folder("\(root.path) is not a dynexport build folder (no readable manifest.json)")
        }
        guard let format = manifest["format"] as? String, format.hasPrefix("dynexport-build/"),
              let backends = manifest["backends"] as? [String], !backends.isEmpty,
              let plan = (manifest["plan"] as? [String: Any])?["file"] as? String,
              let artifacts = manifest["artifacts"] as? [String: String] else {
            throw DynexportError.folder("\(manifestURL.path): not a dynexport build manifest (format, backends, "
                                        + "plan.file and artifacts are required)")
        }
        self.backends = backends
        self.planFile = plan
        self.artifacts = artifacts
    }

    func defaultBackend() throws -> DynexportSession.Backend {
        for candidate in DynexportSession.Backend.allCases where backends.contains(candidate.rawValue) {
            return candidate
        }
        throw DynexportError.folder("\(root.path): the build has no backend this package runs "
                                    + "(\(backends.joined(separator: ", "))); build with --target ios")
    }

    /// The manifest's entries of a backend's artifact: the file, or every file of its folder.
    func artifactFiles(of backend: DynexportSession.Backend) -> [String] {
        let name = Self.artifactName(of: backend)
        return artifacts.keys.filter { $0 == name || $0.hasPrefix(name + "/") }.sorted()
    }

    func url(_ relative: String) -> URL {
        root.appendingPathComponent(relative)
    }

    func read(_ relative: String) throws -> Data {
        guard !relative.hasPrefix("/"), !relative.split(separator: "/").contains("..") else {
            throw DynexportError.folder("manifest entry '\(relative)' is not a relative path inside the folder")
        }
        do {
            return try Data(contentsOf: url(relative), options: .mappedIfSafe)
        } catch {
            throw DynexportError.folder("\(url(relative).path) cannot be read: \(error.localizedDescription)")
        }
    }

    func verify(files: [String]) throws {
        if files.count < 2 {
            throw DynexportError.folder("\(root.path): the manifest lists no artifact of the chosen backend")
        }
        for file in files {
            guard let expected = artifacts[file] else {
                throw DynexportError.folder("\(root.path): '\(file)' is not among the manifest's checksummed files")
            }
            let digest = SHA256.hash(data: try read(file)).map { String(format: "%02x", $0) }.joined()
            if digest != expected {
                throw DynexportError.folder("\(url(file).path) does not match the manifest's checksum: it changed "
                                            + "after the build")
            }
        }
    }
}
