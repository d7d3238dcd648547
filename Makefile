GO ?= go
PKGS ?= ./...
# go-nvml's headers use deprecated declarations; keep cgo quiet about it.
export CGO_CFLAGS ?= -Wno-deprecated-declarations

.PHONY: help build test bench lint fuzz peers testdata up

help: ## show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## build the kvgate binary into ./kvgate
	$(GO) build -o kvgate ./cmd/kvgate

peers: ## build the outside programs the tests run against (consul, llm-d-inference-sim, llm-d-epp, ollama, etcd, kube-apiserver)
	bash scripts/peers.sh

test: peers lint ## run every test (race detector on), as CI does, and every benchmark once
	$(GO) test -race -count=1 -timeout 40m $(PKGS)
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 10m $(PKGS)

lint: ## gofmt, go vet and the import-boundary check
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	bash scripts/boundaries.sh

bench: ## run the Go benchmarks of the hot paths
	$(GO) test -run '^$$' -bench . -benchmem $(PKGS)

fuzz: ## fuzz every parser and decoder for FUZZTIME each (default 20s)
	bash scripts/fuzz.sh $${FUZZTIME:-20s}

testdata: ## rewrite golden files from the current code
	$(GO) test ./xds/... ./bootstrap/... ./envoy/... -update

up: build ## start the whole system on this machine
	./kvgate up
