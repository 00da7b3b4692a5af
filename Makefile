# make compare : set up .venv (first time) and run the main job, the quick method comparison
# make test    : set up .venv (first time) and run the test suite
.PHONY: setup compare test

setup: .venv/.installed

.venv/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

compare: setup
	.venv/bin/python -m pipeline compare --config configs/compare_quick.yaml

test: setup
	.venv/bin/python -m pytest
