"""The C-level checks, run on plans written here: the C test program (dynrt_test) in the
release build and under ASan + UBSan, and the libFuzzer target for a bounded time on a
corpus seeded with real plans. Their reports are printed (pytest -s shows them); any
sanitizer report fails the test. DYNRT_FUZZ_SECONDS sets the fuzzing time (default 20).

By hand (after a test run built the folders):
    build/sanitize/dynrt_test PLAN.dxfp...
    build/fuzz/fuzz_plan -max_total_time=60 CORPUS_DIR SEED_DIR
"""

from __future__ import annotations

import os
import re
import subprocess

SANITIZER_REPORT = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|SUMMARY: \w+Sanitizer")
FUZZ_SECONDS = int(os.environ.get("DYNRT_FUZZ_SECONDS", "20"))


def _sanitizer_environment() -> dict:
    env = dict(os.environ)
    env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    return env


def _run_c_tests(binary, plan_files, env=None) -> str:
    result = subprocess.run([str(binary), *map(str, plan_files)], capture_output=True, text=True, env=env,
                            timeout=600)
    output = result.stdout + result.stderr
    print(output[-8000:])
    assert result.returncode == 0, f"{binary.name} failed (exit {result.returncode}):\n{output[-8000:]}"
    assert not SANITIZER_REPORT.search(output), f"sanitizer report:\n{output[-8000:]}"
    summary = re.search(r"dynrt_test: (\d+) checks, 0 failed, (\d+) plans", output)
    assert summary and int(summary.group(2)) == len(plan_files), output[-2000:]
    return output


def test_c_tests_release(host_build, plan_files):
    _run_c_tests(host_build / "dynrt_test", plan_files)


def test_c_tests_under_address_and_undefined_behaviour_sanitizers(sanitize_build, plan_files):
    _run_c_tests(sanitize_build / "dynrt_test", plan_files, env=_sanitizer_environment())


def test_fuzz_plan_reader_with_libfuzzer(fuzz_build, plan_files, tmp_path):
    corpus, artifacts = tmp_path / "corpus", tmp_path / "crashes"
    corpus.mkdir()
    artifacts.mkdir()
    seeds = plan_files[0].parent
    command = [str(fuzz_build / "fuzz_plan"), f"-max_total_time={FUZZ_SECONDS}", "-print_final_stats=1",
               "-timeout=10", "-rss_limit_mb=2048", f"-artifact_prefix={artifacts}/", str(corpus), str(seeds)]
    result = subprocess.run(command, capture_output=True, text=True, env=_sanitizer_environment(),
                            timeout=FUZZ_SECONDS + 120)
    output = result.stdout + result.stderr
    stats = "\n".join(line for line in output.splitlines() if line.startswith(("stat::", "Done", "INFO: seed")))
    print(f"fuzz_plan, {FUZZ_SECONDS} s on {len(plan_files)} seed plans:\n{stats}")
    assert result.returncode == 0, f"fuzz_plan failed (exit {result.returncode}):\n{output[-8000:]}"
    assert not SANITIZER_REPORT.search(output), f"fuzzer/sanitizer report:\n{output[-8000:]}"
    assert not any(artifacts.iterdir()), f"crash inputs written: {list(artifacts.iterdir())}"
    runs = int(re.search(r"stat::number_of_executed_units:\s*(\d+)", output).group(1))
    assert runs > 1000, f"only {runs} executions in {FUZZ_SECONDS} s"
