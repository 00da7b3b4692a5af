# make demo : set up .venv (first time) and run the main job
# make test : set up .venv (first time) and run the test suite
.PHONY: setup demo test

setup: .venv/.installed

.venv/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

demo: setup
	.venv/bin/python -m pipeline demo

test: setup
	.venv/bin/python -m pytest
