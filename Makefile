# mdc: make help lists the targets.
SHELL := /bin/bash
GO ?= go
BIN := bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
# How long each fuzz target runs inside make test (the corpus in testdata
# always runs as part of go test).
FUZZTIME ?= 10s
DEMO_DIR ?= $(CURDIR)/.demo

.PHONY: help deps build tools test unit race fuzz ceph e2e lint bench demo clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

deps: ## install the Debian packages tests and demo need (idempotent)
	@hack/install-deps.sh

build: ## build mdc and mdc-agent (and the virtual rack, vrack) into bin/
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/... ./hack/vrack/cmd/vrack

tools: ## test tools kept out of go.mod: kubo (bin/ipfs), to check image CIDs
	@mkdir -p $(BIN)
	cd hack/tools && $(GO) build -o ../../$(BIN)/ipfs github.com/ipfs/kubo/cmd/ipfs

test: deps tools lint unit race ceph e2e fuzz ## everything CI runs: lint, unit and integration tests, race tests, Ceph, QEMU boots, bounded fuzzing

unit: ## go test ./... (integration tests with real components included)
	$(GO) test -count=1 -timeout 20m ./...

race: ## the concurrency-sensitive packages under the race detector
	$(GO) test -count=1 -race -timeout 20m ./machine/... ./events/... ./api/... ./images/... ./dhcp/... ./policy/... ./cmd/mdc-agent/... \
		./bmc/... ./inventory/... ./hack/vrack/redfish/... ./roles/nats/...

ceph: ## the RADOS blob backend and the ceph-osd role against real throwaway single-host Ceph clusters
	@hack/test-ceph.sh
	@hack/test-roles-ceph.sh

e2e: ## the QEMU boot tests on the virtual rack: plug-in, enrolment through BMCs, netboot chains (root)
	$(GO) test -tags e2e -count=1 -timeout 45m -v ./hack/e2e

fuzz: ## every fuzz target for FUZZTIME
	@hack/fuzz.sh $(FUZZTIME)

lint: ## gofmt, go vet, shellcheck of hack/, the nix/ flake's offline checks
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags ceph,pacific ./images/blob/... ./roles/ceph/...
	$(GO) vet -tags e2e ./hack/e2e
	shellcheck -S warning -x hack/*.sh hack/vrack/*.sh roles/ipfs/*.sh .ci/run
	@hack/check-nix.sh

bench: deps ## benchmarks with their peers, figures for docs/BENCHMARKS.md
	@hack/bench.sh

demo: deps build ## a virtual rack live: mdc and QEMU machines that configure themselves, one enrolled through its BMC (root)
	@hack/vrack/demo.sh $(DEMO_DIR)

clean: ## remove build output and the demo's data
	rm -rf $(BIN) $(DEMO_DIR)
