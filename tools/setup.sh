#!/usr/bin/env bash
# One-step set-up on a fresh machine: project-local venv at .venv with every pinned
# dependency (torch, executorch, LiteRT, coremltools, ONNX Runtime, ...) and dynexport itself.
# Safe to re-run: it only installs what is missing or changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "setup: dynexport needs Python 3.11 (the torch 2.13.0 CPU wheel is built for it); found $("$PYTHON" --version)" >&2
  exit 1
fi

# System packages of the native runtime (apt-get runs only when one is missing): compilers
# and ninja for the host build, clang + its runtime libraries for the sanitizers and libFuzzer,
# the aarch64 cross toolchain and qemu user-mode emulation for the ARM64 build and run; the JDK
# and JUnit 5 for runtime_android on the host JVM (--device jvm, its Kotlin tests).
APT_PACKAGES=(build-essential ninja-build clang libclang-rt-14-dev g++-aarch64-linux-gnu qemu-user
              openjdk-17-jdk-headless junit5
              ${DYNEXPORT_APT_PACKAGES:-})
command -v npm >/dev/null || APT_PACKAGES+=(npm)  # the Kotlin compiler below comes from npm
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# requirements.lock pins every transitive dependency, so a new release cannot break set-up.
.venv/bin/python -m pip install -q -r requirements.txt -c requirements.lock
.venv/bin/python -m pip install -q --no-deps -e .
# the native runtime (C core, ExecuTorch adapter, verify driver): host and ARM64 builds
bash tools/build_runtime.sh host --quiet
bash tools/build_runtime.sh aarch64 --quiet
# The Kotlin compiler (the full JVM distribution that npm's kotlin-compiler package carries),
# project-local in .cache/kotlin; then runtime_android for the host JVM (JNI library + jars).
KOTLIN_VERSION=2.4.20
if [ "$(node -p 'require("./.cache/kotlin/node_modules/kotlin-compiler/package.json").version' 2>/dev/null)" != "$KOTLIN_VERSION" ]; then
  echo "setup: installing the Kotlin compiler $KOTLIN_VERSION (npm kotlin-compiler) into .cache/kotlin"
  mkdir -p .cache/kotlin
  npm install --prefix .cache/kotlin --no-audit --no-fund --silent "kotlin-compiler@$KOTLIN_VERSION"
fi
bash tools/build_runtime.sh jvm --quiet
.venv/bin/dynexport --version
echo "setup: done. Activate with 'source .venv/bin/activate', or run .venv/bin/dynexport."
