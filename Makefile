# The two commands a new user needs; see README.md.
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo

.PHONY: deps build demo test bench-up bench-recovery bench-failover bench-proxy

deps:
	bash scripts/install-deps.sh

build: deps
	$(CARGO) build --workspace --bins

# A 3-node Galera cluster in a temporary directory: write on one node, read on another, status, stop.
demo: build
	bash scripts/demo.sh

# The whole suite: unit tests of the pure core, the store conformance suite, and integration
# tests with real mariadbd + galera-4 + mariabackup processes on loopback ports.
test: deps
	$(CARGO) test --workspace

# Benchmarks (see docs/benchmarks.md). The proxy benchmark needs an optimised build.
bench-up: build
	$(CARGO) run -q -p vigil -- bench up --runs 5

bench-recovery: build
	$(CARGO) run -q -p vigil -- bench recovery --runs 5

bench-failover: build
	$(CARGO) run -q -p vigil -- bench failover --runs 5

bench-proxy: deps
	$(CARGO) build --release -p vigil
	./target/release/vigil bench proxy
