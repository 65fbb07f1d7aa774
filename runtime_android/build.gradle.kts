// The Android library module of the dynexport runtime: the Kotlin API (src/main/kotlin,
// org.dynexport.runtime, no android.* import) and libdynexport_jni built by CMakeLists.txt for
// each ABI. NOT BUILT HERE: no Android SDK, NDK or Android Gradle plugin was reachable where
// this was written (see README.md); the same Kotlin sources and CMake project are built and
// tested on the host JVM instead (tools/build_runtime.sh jvm).
//
// Properties (the app's gradle.properties, or -P):
//   dynexport.cmakeArguments   the backends' CMake options, e.g. -DDYNRT_WITH_EXECUTORCH=ON
//                              (a build folder's INTEGRATION.md lists the ones it needs)
//   dynexport.abiPrefixRoot    folder with the backend runtimes built per ABI: <root>/<abi>
//   dynexport.abis             ABIs to build (default arm64-v8a,x86_64)
plugins {
    id("com.android.library")
    id("org.jetbrains.kotlin.android")
}

fun property(name: String, default: String): String = (findProperty(name) as String?) ?: default

android {
    namespace = "org.dynexport.runtime"
    compileSdk = 35

    defaultConfig {
        minSdk = 26
        consumerProguardFiles("consumer-rules.pro")
        ndk {
            abiFilters += property("dynexport.abis", "arm64-v8a,x86_64").split(",").map { it.trim() }
        }
        externalNativeBuild {
            cmake {
                arguments += property("dynexport.cmakeArguments", "-DDYNRT_WITH_EXECUTORCH=ON").split(" ")
                    .filter { it.isNotBlank() }
                arguments += listOf(
                    "-DDYNEXPORT_ABI_PREFIX_ROOT=" + property("dynexport.abiPrefixRoot", ""),
                    "-DANDROID_STL=c++_shared",  // the backend libraries use the shared C++ runtime
                    "-DDYNRT_WERROR=OFF",        // an NDK newer than the one this was written for may warn
                )
                targets += "dynexport_jni"
            }
        }
    }

    externalNativeBuild {
        cmake {
            path = file("CMakeLists.txt")
            version = "3.28.0+"  // the ExecuTorch adapter needs CMake >= 3.28
        }
    }

    sourceSets["main"].java.srcDirs("src/main/kotlin")
    // src/test (JUnit 5) and src/jvmVerify need the host build of libdynexport_jni and a build
    // folder: they run through pytest here (tests/runtime_android), not as Android unit tests.
    sourceSets["test"].java.setSrcDirs(emptyList<String>())

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
}

kotlin {
    jvmToolchain(17)
}
