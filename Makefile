# The two commands of the README. Both set up .venv from nothing first.
.PHONY: setup demo test test-fast bench

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/raypipe demo

test: setup
	RAY_AUTH_MODE=disabled .venv/bin/python -m pytest -q

test-fast: setup
	RAY_AUTH_MODE=disabled .venv/bin/python -m pytest -q -m "not slow"
