# setup and test: the two commands of the README; fuzz: the bounded fuzz runs alone.
.PHONY: setup test fuzz

setup:
	bash tools/setup.sh

# pytest exits 5 when it collected no test: that means the suite is broken, so it fails.
test:
	@.venv/bin/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5): failing" >&2; fi; \
	exit $$rc

# Bounded fuzzing of the readers of untrusted files (manifest, clip, model; atheris) and of the
# plan reader (libFuzzer, C): DYNEXPORT_FUZZ_SECONDS / DYNRT_FUZZ_SECONDS per fuzzer (default 15 / 20).
fuzz:
	.venv/bin/python -m pytest -q -s tests/test_fuzz_readers.py tests/runtime/test_runtime_native_checks.py -k fuzz
