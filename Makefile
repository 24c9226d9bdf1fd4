# The two commands a newcomer needs: `make demo` and `make test`. Both set up what they need first.
.PHONY: setup demo test lint unit bench deb clean

setup:
	@./scripts/setup.sh

demo: setup
	.venv/bin/edgeward demo

lint: setup
	.venv/bin/ruff check src tests benchmarks
	.venv/bin/mypy src

test: lint
	.venv/bin/python -m pytest -q

unit: setup
	.venv/bin/python -m pytest -q tests/unit

bench: setup
	.venv/bin/python -m benchmarks

# dist/edgeward_<version>_<arch>.deb (Debian 12); scripts/build-deb.sh says how it is made
deb: setup
	./scripts/build-deb.sh

clean:
	rm -rf .venv demo-state .pytest_cache .mypy_cache .ruff_cache build dist
