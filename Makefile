# The two commands a new user needs; see README.md.
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo

.PHONY: deps build demo test bench-up

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

bench-up: build
	$(CARGO) run -q -p vigil -- bench up --runs 5
