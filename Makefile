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
test: setup unit validate-deploy bats
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

# Checks deploy/ against the Kubernetes and GitLab CI schemas (validators from PyPI).
.PHONY: validate-deploy
validate-deploy:
	tools/validate-deploy

# The image, with whatever docker is at hand; where there is no Docker engine, DiQiD
# is one: `MEMORY=3G diqid-start make image`. debian:bookworm-slim is used if present,
# else pulled, else made from Debian's packages (tools/base-image: root, debootstrap).
# Behind a TLS-intercepting proxy: make image CA_CERTS=/path/to/proxy-ca.crt
IMAGE ?= diqid
CA_CERTS ?=
.PHONY: image image-smoke
image:
	docker image inspect debian:bookworm-slim >/dev/null 2>&1 \
	  || timeout 120 docker pull debian:bookworm-slim \
	  || tools/base-image debian:bookworm-slim
	docker build -t $(IMAGE) $(if $(CA_CERTS),--build-arg EXTRA_CA_CERTS="$$(cat $(CA_CERTS))") .
# Not part of `make test`: nested VMs under TCG, slow.
image-smoke:
	tools/image-smoke $(IMAGE)
