# microservice-rust: the commands of the README.
#   make run     build and serve the example in dev mode on 127.0.0.1:8080 (no Docker)
#   make test    every test: unit, integration (real binary, real sockets), `make run` itself
#   make lint    rustfmt and clippy, as CI runs them
#   make bench   the product's figures beside bare hyper's and bare tiny_http's, in one run:
#                bench/RESULTS.md
#   make bench-slowloris  10,000 trickling connections beside fresh requests, one worker:
#                bench/SLOWLORIS.md
#   make image   the images microservice-rust and example-rum-counter (no registry needed)
#   make test-docker  the images in a real Docker engine

CARGO ?= cargo
HOST ?= 127.0.0.1
PORT ?= 8080
BIN := target/debug/microservice-rust
EXAMPLE_LIB := target/debug/libexample_rum_counter.so

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)

.PHONY: build run test lint bench bench-slowloris image test-docker clean

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
	python3 bench/run.py

bench-slowloris:
	python3 bench/run.py slowloris

image:
	$(CARGO) build --release -p microservice-rust -p example-rum-counter
	bash docker/rootfs.sh
	docker build -q -t microservice-rust:$(VERSION) -t microservice-rust --build-arg VERSION=$(VERSION) docker
	mkdir -p example-rum-counter/build/lib
	strip -o example-rum-counter/build/lib/libexample_rum_counter.so \
		target/release/libexample_rum_counter.so
	docker build -q -t example-rum-counter example-rum-counter
	@docker images --format '{{.Repository}}:{{.Tag}}  {{.Size}}' microservice-rust
	@docker images --format '{{.Repository}}:{{.Tag}}  {{.Size}}' example-rum-counter

test-docker: image
	python3 tests/docker_test.py
	bash docker/examples/check.sh

clean:
	$(CARGO) clean
	rm -rf docker/build example-rum-counter/build
