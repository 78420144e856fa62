# DiQiD as an image: Docker, privileged containers included, in an unprivileged
# container, through a QEMU VM started inside it.
#
#   docker build -t diqid .        # or `make image`; only debian:bookworm-slim is pulled
#   docker run -it --rm --user 1000:1000 diqid docker run -it --privileged debian
#
# Only classic Dockerfile instructions: the legacy builder of an old docker builds it
# as well as BuildKit does.

# --- build: the static diqid binary, with Debian's own Rust (1.96, bookworm-security)
FROM debian:bookworm-slim AS build
# Behind a TLS-intercepting proxy (corporate networks, some sandboxes) cargo cannot
# reach crates.io until it trusts the proxy's CA:
#   docker build --build-arg EXTRA_CA_CERTS="$(cat proxy-ca.crt)" ...
# A CA certificate is public, and this stage is not part of the image.
ARG EXTRA_CA_CERTS=
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      rustc-web cargo-web gcc libc6-dev ca-certificates >/dev/null \
 && rm -rf /var/lib/apt/lists/* \
 && if [ -n "$EXTRA_CA_CERTS" ]; then \
      printf '%s\n' "$EXTRA_CA_CERTS" | awk '/BEGIN CERTIFICATE/ { n++ } n { print > ("/usr/local/share/ca-certificates/extra-" n ".crt") }' \
      && update-ca-certificates >/dev/null; \
    fi
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# The crates first, in a layer of their own: a change of the source does not fetch
# them again (cargo fetch needs a target to look at, hence the stand-in main.rs).
RUN mkdir src && echo 'fn main() {}' >src/main.rs && cargo fetch --locked && rm -rf src
COPY .cargo .cargo
COPY tools/rustc-static tools/rustc-static
COPY guest guest
COPY src src
# .cargo/config.toml runs rustc through tools/rustc-static, which links the binary
# crate with crt-static: the same binary is the guest's /init.
RUN cargo build --release --locked \
 && if readelf -lW target/release/diqid | grep -q 'program interpreter'; then \
      echo "target/release/diqid is not statically linked" >&2; exit 1; \
    fi \
 && target/release/diqid --list >/dev/null

# --- runtime: QEMU, the guest kernel, dockerd, and diqid
FROM debian:bookworm-slim
LABEL org.opencontainers.image.title="diqid" \
      org.opencontainers.image.description="Docker in QEMU in Docker: a VM-isolated dockerd for unprivileged containers"
# The packages, the pruned kernel modules and the permissions for any uid: see the
# script. It comes before the binary, so that a code change rebuilds only what follows.
COPY tools/image-install tools/prune-modules guest/modules.boot guest/modules.late /usr/local/lib/diqid/
RUN sh /usr/local/lib/diqid/image-install
COPY --from=build /src/target/release/diqid /usr/local/bin/diqid
# One link per applet. /usr/local/bin comes before /usr/bin on PATH, so `docker` is
# the shim, and the shim runs the real CLI, /usr/bin/docker, pointed at the VM.
RUN /usr/local/bin/diqid --install /usr/local/bin \
 && [ "$(readlink /usr/local/bin/docker)" = /usr/local/bin/diqid ]

# The seed's settings with DiQiD's defaults (CPUS, DOCKER_VOLUME_FILE,
# DOCKER_VOLUME_REMOVE and DIQID_* have defaults that depend on the run; see README).
# HOME=/tmp: under --user UID, or OpenShift's random uid, there is no passwd entry
# and docker would make HOME=/, which nobody but root may write; DiQiD keeps its
# cache (the initramfs and the unpacked kernel, ~75 MiB) in $HOME/.cache/diqid, and
# the docker CLI its config in $HOME/.docker. The runtime directory is
# /tmp/diqid-UID (no XDG_RUNTIME_DIR in a container); the temporary volume lives in it.
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/tmp \
    MEMORY=1G \
    DOCKER_VOLUME_SIZE=20G \
    QEMU_TIMEOUT_START=60 \
    DOCKER_TIMEOUT_START=300 \
    QEMU_TIMEOUT_STOP=30
# Writable by any uid (mode 1777, like /tmp).
WORKDIR /workdir
# diqid-start stops the VM cleanly on SIGTERM (about a second), well within the ten
# seconds `docker stop` waits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["diqid-start"]
