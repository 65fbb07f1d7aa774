// swift-tools-version:5.9
// runtime_ios: the dynexport runtime for iOS apps (README.md). Not built or tested where it is
// written: there is no Swift or Apple toolchain there.
//
// Targets:
//   DynrtCore        the portable C core, compiled from dynexport/runtime (symbolic links;
//                    `dynexport build --target ios` copies real files into the app bundle)
//   DynrtExecuTorch  the ExecuTorch adapter (targets/executorch/native), against ExecuTorch's
//                    own Swift package (prebuilt xcframeworks, same version as the .pte's)
//   DynrtCoreML      the Core ML adapter (Objective-C, ARC), one MLModel per plan segment
//   Dynexport        the Swift API: DynexportSession
import PackageDescription

let package = Package(
    name: "Dynexport",
    platforms: [.iOS(.v18), .macOS(.v15)],  // multifunction ML programs (MLModelConfiguration.functionName)
    products: [
        .library(name: "Dynexport", targets: ["Dynexport"]),
    ],
    dependencies: [
        // ExecuTorch's prebuilt runtime: branch swiftpm-<version>, the version in requirements.txt
        .package(url: "https://github.com/pytorch/executorch.git", branch: "swiftpm-1.5.1"),
    ],
    targets: [
        .target(
            name: "DynrtCore",
            path: "Sources/DynrtCore",
            exclude: ["src/dynrt_host.map", "include/dynrt_status.def"],
            sources: ["src"],
            publicHeadersPath: "include",
            cSettings: [.headerSearchPath("src")]
        ),
        .target(
            name: "DynrtExecuTorch",
            dependencies: [
                "DynrtCore",
                .product(name: "executorch", package: "executorch"),
                .product(name: "backend_xnnpack", package: "executorch"),
                .product(name: "kernels_optimized", package: "executorch"),
            ],
            path: "Sources/DynrtExecuTorch",
            publicHeadersPath: "include"
            // the XNNPACK delegate and the kernels register from static initializers: the app
            // links with -all_load (ExecuTorch's iOS guide, "Linkage"; README.md here)
        ),
        .target(
            name: "DynrtCoreML",
            dependencies: ["DynrtCore"],
            path: "Sources/DynrtCoreML",
            publicHeadersPath: "include",
            linkerSettings: [.linkedFramework("CoreML"), .linkedFramework("Foundation")]
        ),
        .target(
            name: "Dynexport",
            dependencies: ["DynrtCore", "DynrtExecuTorch", "DynrtCoreML"],
            path: "Sources/Dynexport"
        ),
    ],
    cLanguageStandard: .c99,
    cxxLanguageStandard: .cxx17
)
