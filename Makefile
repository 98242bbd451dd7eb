# Voltage EMS. `make run` starts the demo node; `make test` runs every test
# against real servers (redis-server must be on PATH: .ci/run installs it).
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)
BIN      := bin/voltage

.PHONY: run build test test-short bench lint fmt clean proto

run:            ## the demo: simulator, Modbus TCP channel, virtual channel, embedded Redis
	@echo "demo operator token: demo-operator-token-0001 (config/examples/demo.yaml)"
	@echo "try: curl -s -X POST -H 'Authorization: Bearer demo-operator-token-0001' -d '{\"value\":1,\"type\":\"c\",\"wait\":\"2s\"}' http://127.0.0.1:8080/control/1001/1"
	@echo "     curl -s -H 'Authorization: Bearer demo-viewer-token-0001' 'http://127.0.0.1:8080/api/points?pattern=1001:m:*'"
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
	$(GO) run ./bench/control
	$(GO) run ./bench/ws
	$(GO) run ./bench/dag
	$(GO) run ./bench/alarms

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

clean:
	rm -rf bin

proto:          ## regenerate messages/*.pb.go (Debian protobuf-compiler; go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12)
	protoc --go_out=. --go_opt=paths=source_relative messages/*.proto
