# Conveniences for developers; README's two commands do not need make.
PY := .venv/bin/python

.PHONY: test unit e2e lint example-config

test:  ## everything, as CI runs it
	./deploy/test.sh

unit:  ## fast tests only (no root, no daemons)
	$(PY) -m pytest -q tests/unit

e2e:  ## the real-VM suite alone (root, QEMU/TCG)
	$(PY) -m pytest -ra -m vm tests/e2e/vm

lint:  ## what deploy/test.sh checks before the tests (any finding fails CI)
	.venv/bin/ruff check proto services guest_agent
	.venv/bin/ruff format --check proto services guest_agent
	.venv/bin/mypy proto services guest_agent

example-config:  ## regenerate deploy/rescoin.example.toml from the schema
	.venv/bin/rescoin config example > deploy/rescoin.example.toml
