# Connect Chat — the two commands: `make run` and `make test`.
.PHONY: run up down test test-aws status bench lint

run:    ## install what is missing, start everything in the foreground (Ctrl-C stops all)
	scripts/stack.sh run

up:     ## the same, in the background
	scripts/stack.sh up

down:   ## stop the background stack (either kind)
	scripts/stack.sh down
	CONNECT_STACK=aws scripts/stack.sh down

status:
	scripts/stack.sh status

test:   ## every test against the real local stack, then the end-to-end suite against the AWS-like one
	scripts/stack.sh test
	CONNECT_STACK=aws scripts/stack.sh test

test-aws: ## the end-to-end suite against the AWS-like stack only: Redis cluster over TLS, Kafka SASL_SSL + SCRAM
	CONNECT_STACK=aws scripts/stack.sh test

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

bench:  ## the load generator against a release-built stack (see README: Benchmarks)
	PROFILE=release scripts/stack.sh up
	cargo run --release -q -p connect-bench --bin connect-loadgen -- $(BENCH_ARGS)
