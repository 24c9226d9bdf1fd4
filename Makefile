# The two commands a newcomer needs: `make demo` and `make test`. Both set up what they need first.
.PHONY: setup demo test lint unit bench clean

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

clean:
	rm -rf .venv demo-state .pytest_cache .mypy_cache .ruff_cache
