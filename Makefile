# hypeman: see README.md. All targets run as root on Debian 12.
GO        ?= go
GUEST_BIN := internal/guestbin/bin/hypeman-guest
GO_SRC    := $(shell find . -name '*.go' -not -path './test/*' 2>/dev/null) go.mod go.sum

.PHONY: all build setup test test-unit test-e2e demo generate clean bench

all: build

build: bin/hypeman

$(GUEST_BIN): $(shell find cmd/hypeman-guest internal/guest -name '*.go') go.mod
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o $@ ./cmd/hypeman-guest

bin/hypeman: $(GUEST_BIN) $(GO_SRC)
	$(GO) build -o $@ ./cmd/hypeman

generate:
	$(GO) generate ./internal/oapi

setup:
	./scripts/setup.sh

test: setup build
	./scripts/test.sh

demo: setup build
	./scripts/demo.sh

bench: setup build
	cd test/e2e && go test -run '^$$' -bench BenchmarkBoot -benchtime 6x -count 1 .

clean:
	rm -rf bin $(GUEST_BIN)
