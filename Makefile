# Tidegate: the two quick-start commands are `make demo` and `make test`.
# Both run scripts/setup.sh first (Debian packages, kernel headers, bpffs, venv): safe to repeat.
SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# The static checks, run by `make lint` and first thing in `make test`: style, types, and the
# import layering (testbed -> control -> dataplane; see scripts/check_imports.py).
define LINT
$(PY) -m ruff check dataplane control testbed tests scripts
$(PY) -m mypy dataplane control testbed scripts/check_imports.py
$(PY) scripts/check_imports.py
endef

.PHONY: setup test test-fast lint demo bench clean proto install uninstall

setup:
	@bash scripts/setup.sh

# Everything: unit, BPF (BPF_PROG_TEST_RUN) and namespace tests. Needs root.
test: setup proto
	$(LINT)
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# The unit tier only (tests/unit/): pure Python, no root, no kernel. The others: tests/bpf/
# (BPF_PROG_TEST_RUN) and tests/integration/ (namespaces, daemons).
test-fast:
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) tests/unit

lint: proto
	$(LINT)

demo: setup
	$(PY) -m testbed.demo

bench: setup
	$(PY) -m testbed.bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Python gRPC modules from proto/ into control/rpc/gen/ (regenerated only when the .proto changed).
proto:
	$(PY) -m control.rpc.protogen

# The daemon as a systemd service (scripts/install.sh; docs/operations.md): code and a venv in
# $(LIBDIR), `tidegate` in $(BINDIR), tidegate.service in $(UNITDIR), config in
# $(SYSCONFDIR)/tidegate/. DESTDIR=DIR stages it for packaging. Needs no `make setup`.
PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib/tidegate
BINDIR ?= $(PREFIX)/bin
UNITDIR ?= /etc/systemd/system
SYSCONFDIR ?= /etc
STATEDIR ?= /var/lib/tidegate
INSTALL_VARS = DESTDIR="$(DESTDIR)" PREFIX="$(PREFIX)" LIBDIR="$(LIBDIR)" BINDIR="$(BINDIR)" \
	UNITDIR="$(UNITDIR)" SYSCONFDIR="$(SYSCONFDIR)" STATEDIR="$(STATEDIR)"

install:
	@$(INSTALL_VARS) bash scripts/install.sh install

# Keeps $(SYSCONFDIR)/tidegate and $(STATEDIR) unless PURGE=1.
uninstall:
	@$(INSTALL_VARS) PURGE="$(PURGE)" bash scripts/install.sh uninstall
