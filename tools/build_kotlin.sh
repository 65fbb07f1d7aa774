#!/usr/bin/env bash
# Compiles the Kotlin API of runtime_android for the host JVM (tools/build_runtime.sh jvm calls it):
#
#   tools/build_kotlin.sh BUILD_DIR [--quiet]
#     BUILD_DIR/jars/dynexport-runtime.jar      src/main/kotlin   (org.dynexport.runtime: the app's API)
#     BUILD_DIR/jars/dynexport-jvm-verify.jar   src/jvmVerify     (the verify driver of --device jvm)
#     BUILD_DIR/jars/dynexport-runtime-tests.jar src/test/kotlin  (JUnit 5 tests)
#     BUILD_DIR/jars/classpath                  what `java -cp` needs besides these: the Kotlin stdlib
#
# The compiler is the Kotlin distribution of npm's kotlin-compiler (make setup installs it into
# .cache/kotlin; KOTLIN_HOME overrides), on Debian's JDK 17; JUnit 5 is Debian's junit5 (/usr/share/java).
# A jar is rebuilt only when a source of it (or a jar it compiles against) is newer.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:?usage: tools/build_kotlin.sh BUILD_DIR [--quiet]}
QUIET=0
if [ "${2:-}" = --quiet ]; then QUIET=1; fi
die() { echo "build_kotlin: $*" >&2; exit 1; }
say() { [ "$QUIET" = 1 ] || echo "build_kotlin: $*"; }

KOTLIN_HOME=${KOTLIN_HOME:-$ROOT/.cache/kotlin/node_modules/kotlin-compiler}
KOTLINC=$KOTLIN_HOME/bin/kotlinc
[ -x "$KOTLINC" ] || die "no Kotlin compiler at $KOTLINC: run 'make setup' (npm install kotlin-compiler@2.4.20 into .cache/kotlin)"
STDLIB=$KOTLIN_HOME/lib/kotlin-stdlib.jar
JUNIT=/usr/share/java/junit-jupiter-api.jar:/usr/share/java/apiguardian-api.jar:/usr/share/java/opentest4j.jar:/usr/share/java/junit-platform-commons.jar
SRC=$ROOT/runtime_android/src
JARS=$BUILD/jars
mkdir -p "$JARS"

# compile JAR SOURCE_DIR CLASSPATH [KOTLINC OPTIONS]: only when a source or a classpath jar is newer than JAR
compile() {
  local jar=$1 sources=$2 classpath=$3
  shift 3
  local newest="" dep
  if [ -f "$jar" ]; then
    newest=$(find "$sources" -name '*.kt' -newer "$jar" | head -1)
    for dep in ${classpath//:/ }; do
      if [ "$dep" -nt "$jar" ]; then newest=$dep; fi
    done
    if [ -z "$newest" ]; then return 0; fi
  fi
  say "compiling $(basename "$jar") (kotlinc, ~10-20 s)"
  local log=$JARS/$(basename "$jar" .jar).log
  if ! JAVA_OPTS="${JAVA_OPTS:--Xss4m}" "$KOTLINC" -jvm-target 17 -Werror -cp "$classpath" "$@" -d "${jar%.jar}.tmp.jar" \
      $(find "$sources" -name '*.kt' | sort) >"$log" 2>&1; then
    cat "$log" >&2
    rm -rf "${jar%.jar}.tmp.jar"
    die "kotlinc failed on $sources"
  fi
  mv "${jar%.jar}.tmp.jar" "$jar"
}

compile "$JARS/dynexport-runtime.jar" "$SRC/main/kotlin" "$STDLIB"
compile "$JARS/dynexport-jvm-verify.jar" "$SRC/jvmVerify/kotlin" "$STDLIB:$JARS/dynexport-runtime.jar"
compile "$JARS/dynexport-runtime-tests.jar" "$SRC/test/kotlin" \
  "$STDLIB:$JARS/dynexport-runtime.jar:$JUNIT:$KOTLIN_HOME/lib/kotlin-test.jar:$KOTLIN_HOME/lib/kotlin-test-junit5.jar" \
  "-Xfriend-paths=$JARS/dynexport-runtime.jar"  # the tests read internal parts (the manifest reader)
printf '%s\n' "$STDLIB" > "$JARS/classpath"
