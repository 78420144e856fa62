# `make run`: install what is missing, build, and run the main job.
# `make test`: the same set-up, then every test (unit, integration, end to end).
export PATH := $(CURDIR)/applets:$(PATH)

.PHONY: setup build run test unit bats
setup:
	tools/setup
build:
	cargo build --release
run: setup
	diqid-start tools/demo
test: setup unit bats
unit:
	cargo test --release
bats:
	bats --timing bats/

# Not part of `make test`: boots about ten VMs and runs the seed's method beside them.
.PHONY: bench
bench: setup
	python3 bench/bench.py

# Not part of `make test`: 20 start/stop cycles on one kept volume.
.PHONY: soak
soak: setup
	tools/soak 20
