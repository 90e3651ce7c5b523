# Connect Chat — the two commands: `make run` and `make test`.
.PHONY: run up down test test-aws test-browser test-faults test-regions fuzz soak regions status bench lint

run:    ## install what is missing, start everything in the foreground (Ctrl-C stops all)
	scripts/stack.sh run

up:     ## the same, in the background
	scripts/stack.sh up

regions: ## two regions: the stack as region a, region b beside it (8180/8181, API 8190), MirrorMaker 2 between them
	scripts/stack.sh regions

down:   ## stop the background stack (any kind, region b and MirrorMaker 2 included)
	scripts/stack.sh down
	CONNECT_STACK=aws scripts/stack.sh down

status:
	scripts/stack.sh status

test:   ## the fuzz targets (30 s each), every test against the real local stack with the fault suite, the end-to-end suite against the AWS-like one, then the two-region tests
	scripts/fuzz.sh
	scripts/stack.sh test
	CONNECT_STACK=aws scripts/stack.sh test
	scripts/stack.sh test-regions

fuzz:   ## every fuzz target for FUZZ_SECONDS (30) each (cargo fuzz, libFuzzer)
	scripts/fuzz.sh

soak:   ## 30 minutes at 200 msg/s on a release-built stack: .local/soak/soak.csv and soak.png (SOAK_MINUTES, SOAK_RATE)
	scripts/soak.sh

test-browser: ## the web client in headless Chromium against the stack (two users across both gateways, a reload, a group of three, offline delivery); screenshots in .local/browser-test
	scripts/stack.sh test-browser

test-faults: ## the fault suite alone: a message stream through each fault (SIGKILL messaging, SIGKILL a gateway, restart Kafka, restart Redis, DynamoDB frozen 10 s), then the check
	scripts/stack.sh test-faults

test-regions: ## the end-to-end tests across two regions (make regions)
	scripts/stack.sh test-regions

test-aws: ## the end-to-end suite against the AWS-like stack only: Redis cluster over TLS, Kafka SASL_SSL + SCRAM
	CONNECT_STACK=aws scripts/stack.sh test

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p connect-e2e --test regions --test memory -- -D warnings

bench:  ## the load generator against a release-built stack (docs/benchmarks.md)
	PROFILE=release scripts/stack.sh up
	cargo run --release -q -p connect-bench --bin connect-loadgen -- $(BENCH_ARGS)
