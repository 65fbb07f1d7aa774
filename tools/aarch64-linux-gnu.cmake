# CMake toolchain: cross-compile for Linux ARM64 with Debian's g++-aarch64-linux-gnu.
# Used by tools/build_runtime.sh aarch64; the result runs under
#   qemu-aarch64 -L /usr/aarch64-linux-gnu <binary>
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)

# Debian's multiarch cross root: headers and libraries of the target.
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
# Programs (python, ninja) from the host; libraries, headers and packages from the target
# root or from paths given explicitly (CMAKE_PREFIX_PATH at the unpacked aarch64 wheel, which
# the package's config resolves relative to itself, so BOTH lets it be found outside the root).
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)

# Running a target binary on the build machine (try_run, tests) goes through qemu.
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64;-L;/usr/aarch64-linux-gnu)
