# The two commands of the README. Both set up .venv from nothing first.
.PHONY: setup setup-test demo test test-fast bench

# Pretrained weights (MiniFASNet): ../shared/weights beside a development checkout; elsewhere
# raypipe takes them from its cache or their published URL (docs/training.md).
export RAYPIPE_WEIGHTS_DIR ?= $(wildcard $(abspath ../shared/weights))

setup:
	bash scripts/setup.sh

# setup, plus what only the tests need (chromium for the web-page test)
setup-test:
	bash scripts/setup.sh --test

demo: setup
	.venv/bin/raypipe demo

test: setup-test
	RAY_AUTH_MODE=disabled .venv/bin/python -m pytest -q --durations=30

test-fast: setup-test
	RAY_AUTH_MODE=disabled .venv/bin/python -m pytest -q -m "not slow"
