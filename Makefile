# The two commands of the README.
.PHONY: setup test

setup:
	bash tools/setup.sh

# pytest exits 5 when it collected no test: that means the suite is broken, so it fails.
test:
	@.venv/bin/python -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5): failing" >&2; fi; \
	exit $$rc
