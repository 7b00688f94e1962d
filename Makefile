# Cordon: make build | make test | make demo | make bench | make package
GO      ?= go
# Static binaries: nothing to install on a card-data host but the binary
# (and go-landlock's psx then uses the Go runtime, not libpsx).
export CGO_ENABLED = 0
BIN     := bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/cordon-ir/cordon/controller/server.Version=$(VERSION) -X github.com/cordon-ir/cordon/agent.Version=$(VERSION)

.PHONY: all build test demo bench bench-snapshot deps vet fuzz proto package clean

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/cordon ./controller/cmd/cordon
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN)/cordon-agent ./agent/cmd/cordon-agent
	$(GO) build -trimpath -o $(BIN)/cordon-plugin-iptables ./plugins/iptables
	$(GO) build -trimpath -o $(BIN)/cordon-plugin-nftables ./plugins/nftables
	$(GO) build -trimpath -o $(BIN)/cordon-plugin-aws ./plugins/aws
	$(GO) build -trimpath -o $(BIN)/cordon-plugin-azure ./plugins/azure
	$(GO) build -trimpath -o $(BIN)/cordon-plugin-gcp ./plugins/gcp

deps:
	@./scripts/deps.sh

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { echo "gofmt needed:"; gofmt -l .; exit 1; }

# Namespace tests need root; as root they must run, never skip.
test: deps build vet
	CORDON_REQUIRE_NETNS=$$( [ "$$(id -u)" = 0 ] && echo 1 ) $(GO) test -count=1 -timeout 20m ./...

demo: deps build
	$(GO) run ./demo --bin $(BIN)

bench: deps build
	$(GO) run ./bench/contain --bin $(BIN)
	$(GO) run ./bench/snapshot
	$(GO) run ./bench/firewall

# The snapshot alone: 10,000 processes and 20,000 connections in a namespace.
bench-snapshot: deps
	$(GO) run ./bench/snapshot

# A short run of every fuzz target.
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzVerify -fuzztime 30s ./pkg/evidence
	$(GO) test -run '^$$' -fuzz FuzzDecodeOrder -fuzztime 30s ./pkg/wire
	$(GO) test -run '^$$' -fuzz FuzzParse -fuzztime 30s ./pkg/flagfile

proto:
	protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative pkg/firewall/proto/firewall.proto
	protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative pkg/cloud/proto/cloud.proto

# .deb and .rpm of cordon-agent and cordon-controller for amd64 and arm64,
# in dist/ (nfpm; deploy/nfpm). Debian and RPM sort '~' before the release.
PKG_VERSION ?= 0.1.0~git.$(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
PKG_ARCH    ?= amd64,arm64
package:
	$(GO) run ./deploy/package --out dist --version $(PKG_VERSION) --arch $(PKG_ARCH)

clean:
	rm -rf $(BIN) dist
