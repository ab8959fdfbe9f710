# microservice-rust: the commands of the README.
#   make run     build and serve the example in dev mode on 127.0.0.1:8080 (no Docker)
#   make test    every test: unit, integration (real binary, real sockets), `make run` itself
#   make lint    rustfmt and clippy, as CI runs them
#   make bench   the production hot path against bare tiny_http, in one run

CARGO ?= cargo
HOST ?= 127.0.0.1
PORT ?= 8080
BIN := target/debug/microservice-rust
EXAMPLE_LIB := target/debug/libexample_rum_counter.so

.PHONY: build run test lint bench clean

build:
	$(CARGO) build --workspace

run: build
	$(BIN) --host $(HOST) --port $(PORT) --app $(EXAMPLE_LIB) \
		--config example-rum-counter/config/dev/config.json

test: build
	$(CARGO) test --workspace
	bash tests/make-run.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench:
	bash bench/hot-path.sh

clean:
	$(CARGO) clean
