# microservice-rust: the commands of the README.
# `make help` lists the targets, one line each (the `## ` comment after each target);
# `make` alone builds.

CARGO ?= cargo
HOST ?= 127.0.0.1
PORT ?= 8080
BIN := target/debug/microservice-rust
EXAMPLE_LIB := target/debug/libexample_rum_counter.so
# The Python host is built against Debian's python3 (python3-dev, libpython3-dev); the
# tests' packages (Flask) live in a virtualenv of that Python.
PYTHON ?= /usr/bin/python3
VENV := target/python-venv

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)

.PHONY: build python python-env run test lint bench bench-slowloris bench-compare bench-profile bench-python image image-python test-docker clean help

.DEFAULT_GOAL := build

build: ## Debug build: server, example app, fixture app, baselines (default; Rust and cc only)
	$(CARGO) build

python: ## Debug build of the Python host (needs python3-dev and libpython3-dev)
	@$(PYTHON) -c 'import sysconfig, sys; sys.exit(not sysconfig.get_config_var("Py_ENABLE_SHARED"))' \
		|| { echo "$(PYTHON) has no shared libpython: apt-get install python3-dev libpython3-dev"; exit 1; }
	PYO3_PYTHON=$(PYTHON) $(CARGO) build -p microservice-rust-python

python-env: $(VENV)/done ## The tests' virtualenv (Flask), in target/python-venv

$(VENV)/done: tests/apps/python/requirements.txt
	$(PYTHON) -m venv $(VENV) || { echo "apt-get install python3-venv"; exit 1; }
	$(VENV)/bin/pip install -q -r tests/apps/python/requirements.txt
	touch $@

run: build ## Build, then serve the example app in dev mode on 127.0.0.1:8080 (HOST, PORT)
	$(BIN) --host $(HOST) --port $(PORT) --app $(EXAMPLE_LIB) \
		--config example-rum-counter/config/dev/config.json

test: build python python-env ## Every test: unit, integration (real binary, real sockets), `make run` itself
	$(CARGO) test --workspace
	bash tests/make-run.sh

lint: ## rustfmt --check and clippy -D warnings, as CI runs them
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: ## Product vs bare hyper at its best and in the product's shape (~20 min): bench/RESULTS.md, SLOWLORIS.md
	python3 bench/run.py

bench-slowloris: ## Only the slow clients: trickling heads, trickling bodies, 500 uploads (~5 min): bench/SLOWLORIS.md
	python3 bench/run.py slowloris

bench-compare: ## This build beside BEFORE=REV, both at once on one core (~5 min): bench/COMPARE.md
	BEFORE="$(BEFORE)" python3 bench/compare.py

bench-profile: ## Instructions per request by thread, product and bare hyper under callgrind (~3 min): bench/PROFILE.md
	python3 bench/profile.py

bench-python: ## Python WSGI servers beside the Python host, Flask and plain WSGI (~25 min): bench/PYTHON.md
	python3 bench/python.py $(BENCH_ARGS)

image: ## Images microservice-rust and example-rum-counter, from a release build (no registry)
	$(CARGO) build --release -p microservice-rust -p example-rum-counter
	bash docker/rootfs.sh
	docker build -q -t microservice-rust:$(VERSION) -t microservice-rust --build-arg VERSION=$(VERSION) docker
	mkdir -p example-rum-counter/build/lib
	strip -o example-rum-counter/build/lib/libexample_rum_counter.so \
		target/release/libexample_rum_counter.so
	docker build -q -t example-rum-counter example-rum-counter
	@docker images --format '{{.Repository}}:{{.Tag}}  {{.Size}}' microservice-rust
	@docker images --format '{{.Repository}}:{{.Tag}}  {{.Size}}' example-rum-counter

# CA certificates the Python image trusts beside Debian's (*.crt in this directory), for
# pip behind a TLS-intercepting proxy, e.g. EXTRA_CAS=/usr/local/share/ca-certificates.
# Empty by default: an image to ship trusts Debian's alone.
EXTRA_CAS ?=

image-python: ## Images microservice-rust-python and example-rum-counter-python: Debian's python3, no registry (root)
	PYO3_PYTHON=$(PYTHON) $(CARGO) build --release -p microservice-rust -p microservice-rust-python
	EXTRA_CAS="$(EXTRA_CAS)" bash docker/python/rootfs.sh
	docker build -q --network host -t microservice-rust-python:$(VERSION) -t microservice-rust-python \
		--build-arg VERSION=$(VERSION) docker/python
	docker build -q --network host -t example-rum-counter-python example-rum-counter-python
	@docker images --format '{{.Repository}}:{{.Tag}}  {{.Size}}' microservice-rust-python
	@docker images --format '{{.Repository}}:{{.Tag}}  {{.Size}}' example-rum-counter-python

test-docker: image image-python ## `make image image-python`, then the images in a real Docker engine; check docker/examples
	python3 tests/docker_test.py
	bash docker/examples/check.sh

clean: ## cargo clean, and remove docker/build and example-rum-counter/build
	$(CARGO) clean
	rm -rf docker/build example-rum-counter/build

help: ## List the targets, one line each
	@awk 'BEGIN {FS = ":[^#]*## "} /^[a-zA-Z0-9_.-]+:[^=]*## / {printf "  %-16s %s\n", $$1, $$2}' \
		$(MAKEFILE_LIST)
