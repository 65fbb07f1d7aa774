#!/usr/bin/env bash
# Fetch ONNX Runtime's C API header (onnxruntime_c_api.h) into .cache/onnxruntime-header/include.
#
#   tools/fetch_onnxruntime_header.sh [--quiet]     prints the include folder on stdout
#
# The onnxruntime wheel ships the library (capi/libonnxruntime.so.*) but no header, and no PyPI
# or npm package carries it; Debian trixie's libonnxruntime-dev does (1.21, ORT_API_VERSION 21,
# which the wheel's newer library serves: OrtGetApiBase()->GetApi(21)). It is fetched with
# apt-get download through a private sources list (index under .cache/, nothing system-wide
# changes) and unpacked with dpkg -x; only the header is kept. Never committed (.cache/ is
# ignored). Idempotent: a second run with the header present does nothing.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
QUIET=0
[ "${1:-}" = "--quiet" ] && QUIET=1
say() { [ "$QUIET" = 1 ] || echo "fetch_onnxruntime_header: $*" >&2; }
die() { echo "fetch_onnxruntime_header: $*" >&2; exit 1; }

SUITE=trixie
PACKAGE=libonnxruntime-dev
CACHE=$ROOT/.cache/onnxruntime-header
INCLUDE=$CACHE/include
if [ -f "$INCLUDE/onnxruntime_c_api.h" ]; then
  echo "$INCLUDE"
  exit 0
fi
command -v apt-get >/dev/null || die "apt-get not found: put onnxruntime_c_api.h (ORT_API_VERSION <= the wheel's) in $INCLUDE by hand"
command -v dpkg >/dev/null || die "dpkg not found (needed to unpack $PACKAGE)"
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$KEYRING" ] || die "$KEYRING is missing (Debian package debian-archive-keyring)"

APT=$CACHE/apt
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial"
echo "deb [signed-by=$KEYRING] http://deb.debian.org/debian $SUITE main" > "$APT/sources.list"
apt_private=(-o "Dir::Etc::SourceList=$APT/sources.list" -o Dir::Etc::SourceParts=/dev/null
             -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache" -o Debug::NoLocking=1
             -o APT::Sandbox::User=root -q)
say "reading Debian $SUITE's package index into $APT (private sources list)"
apt-get "${apt_private[@]}" update >"$APT/update.log" 2>&1 || die "apt-get update of $SUITE failed (log: $APT/update.log)"
staging=$(mktemp -d "$CACHE/.fetch-XXXXXX")
trap 'rm -rf "$staging"' EXIT
say "downloading $PACKAGE ($SUITE)"
(cd "$staging" && apt-get "${apt_private[@]}" download "$PACKAGE" >"$APT/download.log" 2>&1) \
  || die "apt-get download $PACKAGE failed (log: $APT/download.log)"
deb=$(ls "$staging"/"$PACKAGE"_*.deb 2>/dev/null | head -1 || true)
[ -n "$deb" ] || die "apt-get download gave no $PACKAGE .deb"
dpkg -x "$deb" "$staging/unpacked"
header=$staging/unpacked/usr/include/onnxruntime/onnxruntime_c_api.h
[ -f "$header" ] || die "$(basename "$deb") has no usr/include/onnxruntime/onnxruntime_c_api.h"
mkdir -p "$staging/include"
cp "$header" "$staging/include/"
basename "$deb" > "$staging/include/SOURCE"
rm -rf "$INCLUDE"
mv "$staging/include" "$INCLUDE"
say "header: $INCLUDE/onnxruntime_c_api.h ($(grep -m1 '#define ORT_API_VERSION' "$INCLUDE/onnxruntime_c_api.h"))"
echo "$INCLUDE"
