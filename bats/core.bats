#!/usr/bin/env bats
# One VM serves every test of this file; the docker shim finds it via DIQID_RUNDIR.

load helpers

setup_file() {
  touch /tmp/diqid-bats.marker
  start_vm
  export VM_RUNDIR VM_PID VM_LOG
}

teardown_file() {
  stop_vm
}

@test "a privileged container creates a network interface" {
  run docker run --rm --privileged "$IMAGE" sh -c 'ip link add d0 type dummy && echo ok'
  [ "$status" = 0 ]
  [ "$output" = ok ]
}

@test "an unprivileged container may not" {
  run docker run --rm "$IMAGE" sh -c 'ip link add d0 type dummy'
  [ "$status" != 0 ]
}

@test "containers join their network through DiQiD's hook, not a re-executed dockerd, and reach it" {
  id=$(docker run -d "$IMAGE" sleep 60)
  run docker run --rm --privileged --pid=host "$IMAGE" sh -c "pidof dockerd; nsenter -t 1 -m cat /run/docker/containerd/daemon/io.containerd.runtime.v2.task/moby/$id/config.json"
  docker rm -f "$id" >/dev/null
  [ "$status" = 0 ]
  dockerd_pid=${lines[0]}
  [[ "$output" == *'"libnetwork-setkey","-exec-root=/var/run/docker","'$id'"'* ]]
  [[ "$output" == *'"path":"/proc/1/exe"'* ]]
  [[ "$output" != *"/proc/$dockerd_pid/exe"* ]]
  run docker run --rm "$IMAGE" ping -c 1 -W 5 172.17.0.1
  [ "$status" = 0 ]
}

@test "crun, behind DiQiD's wrapper, is the default runtime; runc stays at hand" {
  [ "$(docker info --format '{{.DefaultRuntime}}')" = crun ]
  run docker run --rm --runtime runc "$IMAGE" ping -c 1 -W 5 172.17.0.1
  [ "$status" = 0 ]
}

@test "a container whose shim dies is reported exited and its processes are gone (DiQiD's shim clean-up)" {
  id=$(docker run -d "$IMAGE" sleep 61)
  docker run --rm --privileged --pid=host "$IMAGE" nsenter -t 1 -m /bin/sh -c "pkill -9 -f '[c]ontainerd-shim-runc-v2 -namespace moby -id $id'"
  run timeout 20 docker wait "$id"
  [ "$status" = 0 ]
  [ "$output" = 137 ]
  run docker run --rm --pid=host "$IMAGE" sh -c 'ps -o args | grep "[s]leep 61"'
  docker rm "$id" >/dev/null
  [ "$status" = 1 ]
  [ "$output" = "" ]
}

@test "dockerd's rules are in iptables' legacy tables" {
  # (That containers reach out through them: local.bats, host.docker.internal.)
  run docker run --rm --privileged --pid=host "$IMAGE" nsenter -t 1 -m -n /usr/sbin/iptables-legacy -t nat -S POSTROUTING
  [ "$status" = 0 ]
  [[ "$output" == *"-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"* ]]
}

@test "under TCG the guest maps programs without randomization (translations are reused)" {
  run docker run --rm "$IMAGE" cat /proc/sys/kernel/randomize_va_space
  [ "$status" = 0 ]
  [ "$output" = 0 ]
}

@test "exit statuses pass through" {
  run docker run --rm "$IMAGE" sh -c 'exit 42'
  [ "$status" = 42 ]
  run docker run --rm "$IMAGE" false
  [ "$status" = 1 ]
}

@test "a bind-mounted outer directory is read and written" {
  dir=$(mktemp -d /tmp/diqid-bind.XXXXXX)
  echo "from outside" > "$dir/in.txt"
  run docker run --rm -v "$dir:$dir" "$IMAGE" sh -c "cat $dir/in.txt && echo 'from inside' > $dir/out.txt && mkdir $dir/sub"
  [ "$status" = 0 ]
  [ "$output" = "from outside" ]
  [ "$(cat "$dir/out.txt")" = "from inside" ]
  [ -d "$dir/sub" ]
  rm -rf "$dir"
}

@test "dockerd keeps its data on the volume, not in the outer filesystem" {
  run docker info --format '{{.DockerRootDir}} {{.Driver}}'
  [ "$output" = "/var/lib/docker overlay2" ]
  # Nothing the guest does lands in the outer /etc, /var, /usr or /root.
  run find /etc /var /usr /root -xdev -newer /tmp/diqid-bats.marker -not -path '/var/tmp/*' -not -path '/root/.cache/*' -not -path '/root/.cargo/*'
  [ "$status" = 0 ]
  [ -z "$output" ] || { echo "written outside: $output"; false; }
}

@test "the docker API answers only with this run's client certificate" {
  port=$(sed -n 's|^DOCKER_HOST=tcp://127.0.0.1:||p' "$VM_RUNDIR/docker.env")
  certs="$VM_RUNDIR/tls/client"
  run curl -s --max-time 5 --cacert "$certs/ca.pem" "https://127.0.0.1:$port/_ping"
  [ "$output" != OK ]
  run curl -s --max-time 5 "http://127.0.0.1:$port/_ping"
  [ "$output" != OK ]
  run curl -s --max-time 5 --cacert "$certs/ca.pem" --cert "$certs/cert.pem" --key "$certs/key.pem" "https://127.0.0.1:$port/_ping"
  [ "$output" = OK ]
  # and the port is on loopback only
  run sh -c "ss -Hltn 'sport = :$port'"
  [[ "$output" == *"127.0.0.1:$port"* ]]
  [[ "$output" != *"0.0.0.0:$port"* ]]
}

@test "the runtime directory is private" {
  [ "$(stat -c %a "$VM_RUNDIR")" = 700 ]
}

@test "a second instance on the same runtime directory is refused" {
  run diqid-start true
  [ "$status" = 2 ]
  [[ "$output" == *"another diqid-start runs in $VM_RUNDIR"* ]]
}

@test "diqid-wait sees the running VM at once" {
  run diqid-wait
  [ "$status" = 0 ]
  [[ "$output" == *"Waiting for dockerd... [OK]"* ]]
}

@test "the shim leaves a DOCKER_HOST of the user's alone" {
  DOCKER_HOST=unix:///nonexistent/docker.sock run docker version --format '{{.Server.Version}}'
  [ "$status" != 0 ]
  [[ "$output" == *"/nonexistent/docker.sock"* ]]
}
