#!/usr/bin/env bats
# The docker command behaves as if the engine were local: published ports, bind
# mounts, host access, daemon.json with a real registry, build, compose, a terminal.
# One VM serves every test. It runs as an ordinary user (uid 1000, no capability,
# the way the image runs under --user 1000:1000), sees a daemon.json of this file's
# own over /etc/docker, and forwards DIQID_PORTS from the start. A registry runs on the
# outer loopback. The docker client of the tests runs as root, as any client may.

load helpers

REGISTRY_PORT=15000
TLS_REGISTRY_PORT=15001   # trusted only through /etc/docker/certs.d
STATIC_PORT=18090   # DIQID_PORTS: outer 18090 -> the VM's 8090
USER_ID=1000

# Waits until URL answers (up to 20 s); prints the body.
fetch() {
  for _ in $(seq 1 100); do
    curl -fsS --max-time 2 "$1" 2>/dev/null && return 0
    sleep 0.2
  done
  echo "$1 never answered" >&2
  return 1
}

# Fails unless URL stops answering within 10 s.
gone() {
  for _ in $(seq 1 50); do
    curl -fsS --max-time 1 "$1" >/dev/null 2>&1 || return 0
    sleep 0.2
  done
  echo "$1 still answers" >&2
  return 1
}

setup_file() {
  touch /tmp/diqid-bats.marker
  export WORK=$(mktemp -d /tmp/diqid-local.XXXXXX)
  mkdir -p "$WORK/etc-docker" "$WORK/registry" "$WORK/home"
  chown $USER_ID:$USER_ID "$WORK" "$WORK/home"
  cat >"$WORK/etc-docker/daemon.json" <<EOF
{"insecure-registries": ["host.docker.internal:$REGISTRY_PORT"], "labels": ["diqid-test=local"], "log-opts": {"max-size": "1m"}, "default-runtime": "runc"}
EOF
  cat >"$WORK/registry.yml" <<EOF
version: 0.1
storage:
  filesystem:
    rootdirectory: $WORK/registry
http:
  addr: 127.0.0.1:$REGISTRY_PORT
EOF
  docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
  echo $! >"$WORK/registry.pid"
  # A second registry with TLS, its CA known to dockerd only through certs.d.
  tls="$WORK/registry-tls"
  mkdir -p "$tls" "$WORK/etc-docker/certs.d/host.docker.internal:$TLS_REGISTRY_PORT"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj "/CN=test CA" \
    -keyout "$tls/ca.key" -out "$tls/ca.crt" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=host.docker.internal" \
    -keyout "$tls/key.pem" -out "$tls/req.csr" 2>/dev/null
  printf 'subjectAltName=DNS:host.docker.internal\n' >"$tls/ext.cnf"
  openssl x509 -req -in "$tls/req.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" -set_serial 7 -days 2 \
    -extfile "$tls/ext.cnf" -out "$tls/cert.pem" 2>/dev/null
  cp "$tls/ca.crt" "$WORK/etc-docker/certs.d/host.docker.internal:$TLS_REGISTRY_PORT/ca.crt"
  cat >"$WORK/registry-tls.yml" <<EOF
version: 0.1
storage:
  filesystem:
    rootdirectory: $tls/data
http:
  addr: 127.0.0.1:$TLS_REGISTRY_PORT
  tls:
    certificate: $tls/cert.pem
    key: $tls/key.pem
EOF
  docker-registry serve "$WORK/registry-tls.yml" >"$WORK/registry-tls.log" 2>&1 &
  echo $! >"$WORK/registry-tls.pid"
  # The runtime directory must be the user's: start_vm makes it, VM_OWNER hands it over.
  VM_OWNER=$USER_ID DIQID_PORTS="$STATIC_PORT:8090" start_vm "$ROOT/bats/with-etc-docker" "$WORK/etc-docker" \
    setpriv --reuid $USER_ID --regid $USER_ID --clear-groups --inh-caps=-all --bounding-set=-all env HOME="$WORK/home"
  export VM_RUNDIR VM_PID VM_LOG
}

teardown_file() {
  kill "$(cat "$WORK/registry.pid")" "$(cat "$WORK/registry-tls.pid")" 2>/dev/null || true
  [ -z "${HTTP_PID:-}" ] || kill "$HTTP_PID" 2>/dev/null || true
  rm -rf "$WORK"
  stop_vm
}

web() {  # web NAME DOCKER-RUN-ARGS...: a container whose httpd serves "hello from NAME"
  local name=$1
  shift
  docker run -d --name "$name" "$@" "$IMAGE" sh -c "echo hello from $name > /index.html && exec httpd -f -p 80 -h /"
}

@test "published ports answer on the outer loopback and go when the container goes" {
  web p1 -p 18081:80 -p 127.0.0.1:18082:80
  web p2 --expose 80 -P
  [ "$(fetch http://127.0.0.1:18081/index.html)" = "hello from p1" ]
  [ "$(fetch http://127.0.0.1:18082/index.html)" = "hello from p1" ]
  port=$(docker port p2 80/tcp | sed -n 's/^0\.0\.0\.0://p')
  [ -n "$port" ]
  [ "$(fetch "http://127.0.0.1:$port/index.html")" = "hello from p2" ]
  # only on loopback
  run sh -c "ss -Hltn 'sport = :18081'"
  [[ "$output" == *"127.0.0.1:18081"* ]]
  docker stop -t 1 p1
  gone http://127.0.0.1:18081/index.html
  gone http://127.0.0.1:18082/index.html
  docker rm -f p1 p2
  gone "http://127.0.0.1:$port/index.html"
  # the port can be published again
  web p3 -p 18081:80
  [ "$(fetch http://127.0.0.1:18081/index.html)" = "hello from p3" ]
  docker rm -f p3
}

@test "a UDP port is published" {
  # The image has no UDP server; the outer python3 serves, bind-mounted in.
  docker run -d --name u1 -p 15353:5353/udp -v /usr:/usr:ro -v /lib:/lib:ro -v /lib64:/lib64:ro "$IMAGE" /usr/bin/python3 -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5353))
while True:
    d, a = s.recvfrom(100)
    s.sendto(b"pong " + d, a)'
  run python3 -c '
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.5)
for _ in range(40):
    s.sendto(b"ping", ("127.0.0.1", 15353))
    try:
        print(s.recvfrom(100)[0].decode()); break
    except OSError:
        time.sleep(0.5)'
  docker rm -f u1
  [ "$output" = "pong ping" ]
}

@test "a port taken on the outer side gets a warning, not silence" {
  python3 -m http.server 18083 --bind 127.0.0.1 >/dev/null 2>&1 &
  taker=$!
  sleep 1
  web p4 -p 18083:80
  for _ in $(seq 1 50); do grep -q "publishes 18083/tcp" "$VM_LOG" && break; sleep 0.2; done
  kill $taker
  docker rm -f p4
  grep "publishes 18083/tcp, but 127.0.0.1:18083 cannot forward to it: the port is in use on this side" "$VM_LOG"
}

@test "DIQID_PORTS forwards from the start, on every outer address" {
  run sh -c "ss -Hltn 'sport = :$STATIC_PORT'"
  [[ "$output" == *"0.0.0.0:$STATIC_PORT"* ]]
  web p5 -p 8090:80
  [ "$(fetch "http://127.0.0.1:$STATIC_PORT/index.html")" = "hello from p5" ]
  [ "$(fetch http://127.0.0.1:8090/index.html)" = "hello from p5" ]
  docker rm -f p5
}

@test "host.docker.internal reaches the outer loopback; outer DNS works inside" {
  mkdir -p "$WORK/www"
  echo "served outside" >"$WORK/www/f.txt"
  python3 -m http.server 18084 --bind 127.0.0.1 --directory "$WORK/www" >/dev/null 2>&1 &
  HTTP_PID=$!
  fetch http://127.0.0.1:18084/f.txt
  run docker run --rm --add-host host.docker.internal:host-gateway "$IMAGE" wget -qO- http://host.docker.internal:18084/f.txt
  kill $HTTP_PID
  [ "$status" = 0 ]
  [ "$output" = "served outside" ]
  # DNS: whatever the outer side resolves, a container resolves too.
  if getent hosts deb.debian.org >/dev/null; then
    run docker run --rm "$IMAGE" nslookup deb.debian.org
    [ "$status" = 0 ]
    [[ "$output" == *"Address"*"deb.debian.org"* || "$output" == *"deb.debian.org"*"Address"* ]]
  fi
}

@test "the outer daemon.json configures the inner dockerd; push to a registry, remove, pull back" {
  [ "$(docker info --format '{{.Labels}}')" = "[diqid-test=local]" ]
  # A daemon.json that chooses the runtime keeps its choice over DiQiD's crun.
  [ "$(docker info --format '{{.DefaultRuntime}}')" = runc ]
  reg="host.docker.internal:$REGISTRY_PORT"
  docker tag "$IMAGE" "$reg/diqid/pushed"
  docker push "$reg/diqid/pushed"
  docker rmi "$reg/diqid/pushed"
  ! docker image inspect "$reg/diqid/pushed" >/dev/null 2>&1
  docker pull "$reg/diqid/pushed"
  [ "$(docker run --rm "$reg/diqid/pushed" echo pulled)" = pulled ]
  # the registry on the outer side holds it
  curl -fsS "http://127.0.0.1:$REGISTRY_PORT/v2/_catalog" | grep -q '"diqid/pushed"'
}

@test "the outer /etc/docker/certs.d makes a TLS registry trusted" {
  reg="host.docker.internal:$TLS_REGISTRY_PORT"
  docker tag "$IMAGE" "$reg/diqid/tls"
  docker push "$reg/diqid/tls"
  docker rmi "$reg/diqid/tls"
  docker pull "$reg/diqid/tls"
  curl -fsS --cacert "$WORK/registry-tls/ca.crt" --resolve "host.docker.internal:$TLS_REGISTRY_PORT:127.0.0.1" \
    "https://$reg/v2/_catalog" | grep -q '"diqid/tls"'
}

@test "bind mounts: symlinks, a 1 GiB file, many small files, outer ownership, docker cp" {
  d="$WORK/bind"
  mkdir -p "$d/tree"
  head -c 1G /dev/urandom >"$d/big"
  for i in $(seq 1 40); do
    mkdir "$d/tree/dir$i"
    for j in $(seq 1 50); do echo "file $i $j" >"$d/tree/dir$i/f$j.txt"; done
  done
  ln -s dir1/f1.txt "$d/tree/link-outside"
  chown -R $USER_ID:$USER_ID "$d"
  docker run --rm -v "$d:$d" "$IMAGE" sh -c "
    set -e
    dd if=$d/big of=$d/big.copy bs=1M 2>/dev/null
    cp -a $d/tree $d/tree.copy
    ln -s tree/dir2/f2.txt $d/link-inside
    [ \"\$(cat $d/tree/link-outside)\" = 'file 1 1' ]"
  cmp "$d/big" "$d/big.copy"
  diff -r "$d/tree" "$d/tree.copy"
  [ "$(find "$d/tree.copy" -type f | wc -l)" = 2000 ]
  [ "$(readlink "$d/link-inside")" = tree/dir2/f2.txt ]
  [ "$(cat "$d/link-inside")" = "file 2 2" ]
  # what a container writes belongs to the user who runs DiQiD
  [ "$(stat -c %u "$d/big.copy")" = $USER_ID ]
  [ "$(stat -c %u "$d/tree.copy/dir7/f7.txt")" = $USER_ID ]
  # docker cp, both ways
  docker create --name cp1 "$IMAGE" true
  docker cp "$d/tree/dir3" cp1:/dir3
  docker cp cp1:/dir3 "$d/dir3.back"
  docker rm cp1
  diff -r "$d/tree/dir3" "$d/dir3.back"
  rm -rf "$d"
}

@test "docker build from an outer context, with and without BuildKit" {
  ctx="$WORK/ctx"
  mkdir -p "$ctx"
  echo "built from context" >"$ctx/hello.txt"
  printf 'FROM %s\nCOPY hello.txt /hello.txt\nRUN cat /hello.txt > /copied.txt\n' "$IMAGE" >"$ctx/Dockerfile"
  docker build -q -t diqid-test/built "$ctx"
  [ "$(docker run --rm diqid-test/built cat /copied.txt)" = "built from context" ]
  # BuildKit: Debian's docker CLI has it built in (a newer CLI wants a buildx plugin).
  PATH="$ROOT/applets:/usr/bin:$PATH" DOCKER_BUILDKIT=1 docker build -t diqid-test/built-bk "$ctx"
  [ "$(docker run --rm diqid-test/built-bk cat /copied.txt)" = "built from context" ]
}

@test "docker-compose: two services talk to each other and publish a port" {
  proj="$WORK/compose"
  mkdir -p "$proj"
  cat >"$proj/docker-compose.yml" <<EOF
version: "2.4"
services:
  web:
    image: $IMAGE
    command: sh -c 'echo hello from compose > /index.html && exec httpd -f -p 80 -h /'
    ports: ["18085:80"]
  client:
    image: $IMAGE
    command: sh -c 'for i in \$\$(seq 1 50); do wget -qO /ok http://web/index.html && break; sleep 0.2; done; cat /ok; exec sleep 300'
EOF
  cd "$proj"
  # docker-compose reads DOCKER_HOST and the rest from its environment, as diqid-start
  # gives them to CMD. REQUESTS_CA_BUNDLE (set on some machines) would override
  # DOCKER_CERT_PATH's CA in python-requests: unset here.
  unset REQUESTS_CA_BUNDLE CURL_CA_BUNDLE
  env $(cat "$VM_RUNDIR/docker.env") docker-compose -p diqidtest up -d
  [ "$(fetch http://127.0.0.1:18085/index.html)" = "hello from compose" ]
  for _ in $(seq 1 50); do
    env $(cat "$VM_RUNDIR/docker.env") docker-compose -p diqidtest logs client | grep -q "hello from compose" && break
    sleep 0.2
  done
  env $(cat "$VM_RUNDIR/docker.env") docker-compose -p diqidtest logs client | grep -q "hello from compose"
  env $(cat "$VM_RUNDIR/docker.env") docker-compose -p diqidtest down -t 1
  gone http://127.0.0.1:18085/index.html
}

@test "docker run -it gets a real terminal through the shim" {
  export TMUX_TMPDIR="$WORK/tmux"
  mkdir -p "$TMUX_TMPDIR"
  tmux new-session -d -s it -x 100 -y 30 "env PATH='$PATH' DIQID_RUNDIR='$VM_RUNDIR' docker run -it --rm $IMAGE sh"
  pane() { tmux capture-pane -p -t it 2>/dev/null | grep -qF -- "$1"; }
  for _ in $(seq 1 300); do pane "built-in shell" && break; sleep 0.1; done
  tmux send-keys -t it 'echo "tty-$((6*7)) $(tty)"' Enter
  ok=""
  for _ in $(seq 1 100); do pane "tty-42 /dev/pts/0" && { ok=1; break; }; sleep 0.1; done
  tmux capture-pane -p -t it >&2 || true
  tmux send-keys -t it 'exit' Enter
  sleep 1
  tmux kill-server 2>/dev/null || true
  [ -n "$ok" ]
}
