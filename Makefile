# Voltage EMS. `make run` starts the demo node; `make test` runs every test
# against real servers (redis-server must be on PATH: .ci/run installs it).
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)
BIN      := bin/voltage

.PHONY: run build test test-short bench lint fmt clean

run:            ## the demo: simulator, Modbus TCP channel, virtual channel, embedded Redis
	$(GO) run -ldflags "$(LDFLAGS)" ./cmd/voltage run -c config/examples/demo.yaml --simulate

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/voltage

test:           ## unit, integration (real redis-server, Modbus over TCP, RTU over a pty) and end-to-end tests
	$(GO) test -race -count=1 -timeout 10m ./...

test-short:
	$(GO) test -short -count=1 ./...

bench:          ## benchmarks; the ingest and memory figures of the README
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 2s ./drivers/... ./messages/... ./actors/...
	$(GO) run ./bench/ingest
	$(GO) run ./bench/memory

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

clean:
	rm -rf bin
