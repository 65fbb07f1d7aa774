#!/usr/bin/env bash
# Configure and build the native runtime (dynrt core, backend adapters, the native driver).
#
#   tools/build_runtime.sh host      [--quiet]   -> build/host      (Release, with the ExecuTorch, ONNX Runtime and LiteRT adapters)
#   tools/build_runtime.sh sanitize  [--quiet]   -> build/sanitize  (ASan + UBSan, core only)
#   tools/build_runtime.sh aarch64   [--quiet]   -> build/aarch64   (ARM64 cross build, with the same adapters)
#   tools/build_runtime.sh fuzz      [--quiet]   -> build/fuzz      (clang libFuzzer target fuzz_plan, core only)
#   tools/build_runtime.sh jvm       [--quiet]   -> build/jvm       (runtime_android for the host JVM: lib/libdynexport_jni.so
#                                                   with the host's adapters, and the Kotlin jars: tools/build_kotlin.sh)
#
# The driver (every backend adapter built) lands in build/<mode>/bin/dynrt_driver. For
# aarch64, run it with
#   build/aarch64/bin/qemu-run build/aarch64/bin/dynrt_driver --backend executorch ...
# (qemu-aarch64 -L /usr/aarch64-linux-gnu with LD_LIBRARY_PATH at the aarch64 wheel's lib/).
# The core-only builds (sanitize, fuzz) need no backend library installed.
#
# ExecuTorch comes from wheels: the venv's for host; for aarch64 the same version's
# manylinux aarch64 wheel, downloaded once into .cache/aarch64 and partly unpacked (lib/,
# include/, share/cmake/). Needs: .venv (make setup), cmake >= 3.28 (the venv's), ninja, a C/C++
# compiler; aarch64 also g++-aarch64-linux-gnu and, to run, qemu-user.
# ONNX Runtime: its C header is fetched once into .cache/onnxruntime-header
# (tools/fetch_onnxruntime_header.sh); the library is not linked but dlopen'ed by the adapter
# from the path compiled in here: the venv's onnxruntime wheel for host, the same version's
# aarch64 wheel (capi/ unpacked into .cache/aarch64) for aarch64. Without the header (no
# network) the adapter is left out with a warning.
# LiteRT: no header (the adapter declares what it uses); libLiteRt.so is dlopen'ed from the
# venv's ai-edge-litert wheel (host) or the same version's aarch64 wheel, fetched once into
# .cache/aarch64 (aarch64). Without it the adapter is left out with a warning.
# Idempotent: configures only when the build folder is new or its settings changed, and a
# second run with nothing changed is a no-op ninja call.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODE=""
QUIET=0
for arg in "$@"; do
  case "$arg" in
    host|sanitize|aarch64|fuzz|jvm) MODE=$arg ;;
    --quiet|-q) QUIET=1 ;;
    -h|--help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build_runtime: unknown argument '$arg' (expected host, sanitize, aarch64, fuzz or jvm, and optionally --quiet)" >&2; exit 2 ;;
  esac
done
if [ -z "$MODE" ]; then
  echo "build_runtime: say what to build: tools/build_runtime.sh host|sanitize|aarch64|fuzz|jvm [--quiet]" >&2
  exit 2
fi

die() { echo "build_runtime: $*" >&2; exit 1; }

PYTHON=$ROOT/.venv/bin/python
[ -x "$PYTHON" ] || die "no venv at $ROOT/.venv: run 'make setup' first"
CMAKE=${CMAKE:-$ROOT/.venv/bin/cmake}
[ -x "$CMAKE" ] || CMAKE=$(command -v cmake || true)
[ -n "$CMAKE" ] || die "cmake not found (make setup installs cmake>=3.28 into .venv)"
cmake_version=$("$CMAKE" --version | head -1 | awk '{print $3}')
if ! printf '%s\n3.28\n' "${cmake_version%%-*}" | sort -V -C -r 2>/dev/null; then
  # sort -C -r: succeeds when the list is in descending order, i.e. version >= 3.28
  die "$CMAKE is version $cmake_version; ExecuTorch's CMake package needs >= 3.28 (use .venv/bin/cmake)"
fi
command -v ninja >/dev/null || die "ninja not found (Debian package: ninja-build)"
SOURCE=$ROOT/dynexport/runtime
[ "$MODE" = jvm ] && SOURCE=$ROOT/runtime_android  # the core's project, plus the JNI layer
[ -f "$SOURCE/CMakeLists.txt" ] || die "$SOURCE/CMakeLists.txt is missing (the runtime core's project)"

# The venv's executorch, for the modes that build its adapter: its version picks the aarch64
# wheel, its share/cmake the host package.
ET_VERSION="" ET_HOST_DIR=""
if [ "$MODE" = host ] || [ "$MODE" = aarch64 ] || [ "$MODE" = jvm ]; then
  read -r ET_VERSION ET_HOST_DIR < <("$PYTHON" - <<'EOF'
import importlib.metadata, importlib.util, pathlib
spec = importlib.util.find_spec("executorch")
print(importlib.metadata.version("executorch"), pathlib.Path(list(spec.submodule_search_locations)[0]))
EOF
  ) || die "executorch is not installed in .venv (run 'make setup'); the $MODE build includes its adapter"
fi

BUILD=$ROOT/build/$MODE
mkdir -p "$BUILD"
LOG=$BUILD/build_runtime.log
: > "$LOG"

say() { [ "$QUIET" = 1 ] || echo "build_runtime: $*"; }
run_logged() {
  if [ "$QUIET" = 1 ]; then
    if ! "$@" >>"$LOG" 2>&1; then
      echo "build_runtime: failed: $*" >&2
      tail -n 40 "$LOG" >&2
      exit 1
    fi
  else
    if ! "$@" 2>&1 | tee -a "$LOG"; then die "failed: $* (log: $LOG)"; fi
  fi
}

PREFIX=""
case "$MODE" in
  host)
    PREFIX=$ET_HOST_DIR
    ARGS=(-G Ninja -DDYNRT_WITH_EXECUTORCH=ON -DCMAKE_BUILD_TYPE=Release)
    ;;
  jvm)
    # find_package(JNI) needs JAVA_HOME: the JDK of the javac on PATH (Debian openjdk-17-jdk-headless)
    if [ -z "${JAVA_HOME:-}" ]; then
      command -v javac >/dev/null || die "javac not found (Debian package: openjdk-17-jdk-headless; make setup)"
      JAVA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v javac)")")")
    fi
    export JAVA_HOME
    PREFIX=$ET_HOST_DIR
    ARGS=(-G Ninja -DDYNRT_WITH_EXECUTORCH=ON -DCMAKE_BUILD_TYPE=Release "-DJAVA_HOME=$JAVA_HOME")
    ;;
  sanitize)
    ARGS=(-G Ninja -DDYNRT_WITH_EXECUTORCH=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDYNRT_SANITIZE=ON)
    ;;
  fuzz)
    command -v clang >/dev/null || die "clang not found (Debian packages: clang libclang-rt-14-dev)"
    ARGS=(-G Ninja -DDYNRT_WITH_EXECUTORCH=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDYNRT_FUZZ=ON
          -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++)
    ;;
  aarch64)
    command -v aarch64-linux-gnu-g++ >/dev/null || die "aarch64-linux-gnu-g++ not found (Debian package: g++-aarch64-linux-gnu)"
    CACHE=$ROOT/.cache/aarch64
    PREFIX=$CACHE/executorch-$ET_VERSION/executorch
    if [ ! -f "$PREFIX/.unpacked" ]; then
      mkdir -p "$CACHE"
      wheel=$(ls "$CACHE"/executorch-"$ET_VERSION"-*manylinux*aarch64.whl 2>/dev/null | head -1 || true)
      if [ -z "$wheel" ]; then
        say "downloading the executorch $ET_VERSION aarch64 wheel into $CACHE"
        run_logged "$PYTHON" -m pip download "executorch==$ET_VERSION" --platform manylinux_2_28_aarch64 \
          --python-version 3.11 --only-binary=:all: --no-deps -d "$CACHE" -q
        wheel=$(ls "$CACHE"/executorch-"$ET_VERSION"-*manylinux*aarch64.whl 2>/dev/null | head -1 || true)
        [ -n "$wheel" ] || die "pip download gave no aarch64 wheel for executorch $ET_VERSION"
      fi
      say "unpacking $(basename "$wheel") (lib, include, share/cmake)"
      run_logged "$PYTHON" - "$wheel" "$CACHE/executorch-$ET_VERSION" <<'EOF'
import pathlib, shutil, sys, tempfile, zipfile
wheel, dest = sys.argv[1], pathlib.Path(sys.argv[2])
keep = ("executorch/lib/", "executorch/include/", "executorch/share/cmake/")
staging = pathlib.Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest.parent))
with zipfile.ZipFile(wheel) as archive:
    archive.extractall(staging, [n for n in archive.namelist() if n.startswith(keep)])
(staging / "executorch" / ".unpacked").write_text(pathlib.Path(wheel).name + "\n")
shutil.rmtree(dest, ignore_errors=True)
staging.rename(dest)
EOF
    fi
    ARGS=(-G Ninja -DDYNRT_WITH_EXECUTORCH=ON -DCMAKE_BUILD_TYPE=Release
          "-DCMAKE_TOOLCHAIN_FILE=$ROOT/tools/aarch64-linux-gnu.cmake")
    ;;
esac
[ -z "$PREFIX" ] || ARGS+=("-DCMAKE_PREFIX_PATH=$PREFIX/share/cmake")

# The ONNX Runtime adapter (host, jvm, aarch64): header from the cache, library path compiled in.
if [ "$MODE" = host ] || [ "$MODE" = aarch64 ] || [ "$MODE" = jvm ]; then
  ORT_INCLUDE=$(bash "$ROOT/tools/fetch_onnxruntime_header.sh" $([ "$QUIET" = 1 ] && echo --quiet)) || ORT_INCLUDE=""
  read -r ORT_VERSION ORT_HOST_LIB < <("$PYTHON" - <<'EOF'
import importlib.metadata, importlib.util, pathlib
try:
    spec = importlib.util.find_spec("onnxruntime")
    capi = pathlib.Path(list(spec.submodule_search_locations)[0]) / "capi"
    print(importlib.metadata.version("onnxruntime"), sorted(capi.glob("libonnxruntime.so.*"))[0])
except Exception:
    print("- -")
EOF
  ) || true
  ORT_LIB=""
  if [ "$MODE" = host ] || [ "$MODE" = jvm ]; then
    ORT_LIB=$ORT_HOST_LIB
  elif [ "${ORT_VERSION:--}" != - ]; then
    ORT_CACHE=$ROOT/.cache/aarch64/onnxruntime-$ORT_VERSION
    if [ ! -f "$ORT_CACHE/.unpacked" ]; then
      wheel=$(ls "$ROOT/.cache/aarch64"/onnxruntime-"$ORT_VERSION"-*manylinux*aarch64.whl 2>/dev/null | head -1 || true)
      if [ -z "$wheel" ]; then
        say "downloading the onnxruntime $ORT_VERSION aarch64 wheel into .cache/aarch64"
        "$PYTHON" -m pip download "onnxruntime==$ORT_VERSION" --platform manylinux_2_28_aarch64 --python-version 3.11 \
          --only-binary=:all: --no-deps -d "$ROOT/.cache/aarch64" -q >>"$LOG" 2>&1 || true
        wheel=$(ls "$ROOT/.cache/aarch64"/onnxruntime-"$ORT_VERSION"-*manylinux*aarch64.whl 2>/dev/null | head -1 || true)
      fi
      if [ -n "$wheel" ]; then
        "$PYTHON" - "$wheel" "$ORT_CACHE" <<'EOF'
import pathlib, shutil, sys, tempfile, zipfile
wheel, dest = sys.argv[1], pathlib.Path(sys.argv[2])
staging = pathlib.Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest.parent))
with zipfile.ZipFile(wheel) as archive:
    archive.extractall(staging, [n for n in archive.namelist() if n.startswith("onnxruntime/capi/libonnxruntime")])
(staging / ".unpacked").write_text(pathlib.Path(wheel).name + "\n")
shutil.rmtree(dest, ignore_errors=True)
staging.rename(dest)
EOF
      fi
    fi
    ORT_LIB=$(ls "$ORT_CACHE"/onnxruntime/capi/libonnxruntime.so.* 2>/dev/null | head -1 || true)
  fi
  if [ -n "$ORT_INCLUDE" ] && [ -n "$ORT_LIB" ] && [ "$ORT_LIB" != - ]; then
    ARGS+=(-DDYNRT_WITH_ONNXRUNTIME=ON "-DDYNRT_ONNXRUNTIME_INCLUDE_DIR=$ORT_INCLUDE" "-DDYNRT_ONNXRUNTIME_LIBRARY=$ORT_LIB")
  else
    echo "build_runtime: warning: building without the ONNX Runtime adapter (header: ${ORT_INCLUDE:-not fetched}, library: ${ORT_LIB:-none})" >&2
  fi
fi

# The LiteRT adapter (host, jvm, aarch64): no header (it declares the C API it uses); the library
# path compiled in: the venv's ai-edge-litert wheel for host, the same version's aarch64 wheel
# (manylinux_2_27 tag; its libLiteRt.so needs glibc 2.34, and /usr/aarch64-linux-gnu has
# Debian 12's 2.36) downloaded once into .cache/aarch64, libLiteRt.so alone unpacked.
if [ "$MODE" = host ] || [ "$MODE" = aarch64 ] || [ "$MODE" = jvm ]; then
  read -r LITERT_VERSION LITERT_HOST_LIB < <("$PYTHON" - <<'EOF'
import importlib.metadata, importlib.util, pathlib
try:
    spec = importlib.util.find_spec("ai_edge_litert")
    print(importlib.metadata.version("ai-edge-litert"), pathlib.Path(list(spec.submodule_search_locations)[0]) / "libLiteRt.so")
except Exception:
    print("- -")
EOF
  ) || true
  LITERT_LIB=""
  if [ "$MODE" = host ] || [ "$MODE" = jvm ]; then
    LITERT_LIB=$LITERT_HOST_LIB
  elif [ "${LITERT_VERSION:--}" != - ]; then
    LITERT_CACHE=$ROOT/.cache/aarch64/ai-edge-litert-$LITERT_VERSION
    if [ ! -f "$LITERT_CACHE/.unpacked" ]; then
      wheel=$(ls "$ROOT/.cache/aarch64"/ai_edge_litert-"$LITERT_VERSION"-*manylinux*aarch64.whl 2>/dev/null | head -1 || true)
      if [ -z "$wheel" ]; then
        say "downloading the ai-edge-litert $LITERT_VERSION aarch64 wheel into .cache/aarch64"
        "$PYTHON" -m pip download "ai-edge-litert==$LITERT_VERSION" --platform manylinux_2_27_aarch64 --python-version 3.11 \
          --only-binary=:all: --no-deps -d "$ROOT/.cache/aarch64" -q >>"$LOG" 2>&1 || true
        wheel=$(ls "$ROOT/.cache/aarch64"/ai_edge_litert-"$LITERT_VERSION"-*manylinux*aarch64.whl 2>/dev/null | head -1 || true)
      fi
      if [ -n "$wheel" ]; then
        "$PYTHON" - "$wheel" "$LITERT_CACHE" <<'EOF'
import pathlib, shutil, sys, tempfile, zipfile
wheel, dest = sys.argv[1], pathlib.Path(sys.argv[2])
staging = pathlib.Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest.parent))
with zipfile.ZipFile(wheel) as archive:
    archive.extractall(staging, ["ai_edge_litert/libLiteRt.so"])
(staging / ".unpacked").write_text(pathlib.Path(wheel).name + "\n")
shutil.rmtree(dest, ignore_errors=True)
staging.rename(dest)
EOF
      fi
    fi
    LITERT_LIB=$(ls "$LITERT_CACHE"/ai_edge_litert/libLiteRt.so 2>/dev/null | head -1 || true)
  fi
  if [ -n "$LITERT_LIB" ] && [ "$LITERT_LIB" != - ]; then
    ARGS+=(-DDYNRT_WITH_LITERT=ON "-DDYNRT_LITERT_LIBRARY=$LITERT_LIB")
  else
    echo "build_runtime: warning: building without the LiteRT adapter (no libLiteRt.so: ai-edge-litert not installed, or its aarch64 wheel not downloaded)" >&2
  fi
fi

# Configure when new, or when the settings differ from the last configure.
settings="$CMAKE -S $SOURCE ${ARGS[*]}"
if [ ! -f "$BUILD/build.ninja" ] || [ "$(cat "$BUILD/.configure-settings" 2>/dev/null)" != "$settings" ]; then
  say "configuring build/$MODE"
  rm -f "$BUILD/CMakeCache.txt" "$BUILD/.configure-settings"  # a failed configure is redone next time
  run_logged "$CMAKE" -S "$SOURCE" -B "$BUILD" "${ARGS[@]}"
  printf '%s' "$settings" > "$BUILD/.configure-settings"
fi
say "building build/$MODE"
run_logged "$CMAKE" --build "$BUILD"

if [ "$MODE" = aarch64 ]; then
  # The wheel's libraries need only each other and the C/C++ runtime (libstdc++, libgcc_s,
  # libm, libdl, libpthread, libc), which /usr/aarch64-linux-gnu provides: not torch.
  # ONNX Runtime (its cpuinfo library) crashes on the host's x86 /proc/cpuinfo: the runner
  # shows the emulated program an ARM Neoverse-N1's (-cpu neoverse-n1), bind-mounted over
  # /proc/cpuinfo in a private mount namespace (unshare -m: nothing outside changes). Where
  # unshare is not allowed (no CAP_SYS_ADMIN) it runs without, as before.
  : > "$BUILD/bin/arm64-cpuinfo"
  for cpu in 0 1; do
    printf 'processor\t: %d\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n' "$cpu" >> "$BUILD/bin/arm64-cpuinfo"
  done
  cat > "$BUILD/bin/qemu-run" <<EOF
#!/bin/sh
# Runs an aarch64 binary of this build under user-mode emulation (written by tools/build_runtime.sh),
# with an ARM /proc/cpuinfo in a private mount namespace when unshare is allowed.
if [ -z "\$DYNRT_QEMU_CPUINFO" ] && unshare -m true 2>/dev/null; then
  exec env DYNRT_QEMU_CPUINFO=1 unshare -m sh -c 'mount --bind "$BUILD/bin/arm64-cpuinfo" /proc/cpuinfo && exec "\$0" "\$@"' "\$0" "\$@"
fi
exec qemu-aarch64 -cpu neoverse-n1 -L /usr/aarch64-linux-gnu -E LD_LIBRARY_PATH="$PREFIX/lib" "\$@"
EOF
  chmod +x "$BUILD/bin/qemu-run"
  say "run: build/aarch64/bin/qemu-run build/aarch64/bin/dynrt_driver --help"
elif [ "$MODE" = jvm ]; then
  bash "$ROOT/tools/build_kotlin.sh" "$BUILD" $([ "$QUIET" = 1 ] && echo --quiet)
  say "JNI library: build/jvm/lib/libdynexport_jni.so; jars: build/jvm/jars/"
elif [ -x "$BUILD/bin/dynrt_driver" ]; then
  say "driver: build/$MODE/bin/dynrt_driver"
else
  say "core only (no backend adapter): build/$MODE/dynrt_test"
fi
