#!/usr/bin/env bats
# Service mode, signals and faults, with real VMs.

load helpers

setup() {
  export DIQID_RUNDIR=$(new_rundir)
  WORK=$(mktemp -d /tmp/diqid-life.XXXXXX)
}

teardown() {
  [ -n "${SVC_PID:-}" ] && kill -9 "$SVC_PID" 2>/dev/null || true
  rm -rf "$WORK"
}

# diqid-start with no CMD and no terminal: serves until signalled.
serve() {
  diqid-start </dev/null >"$WORK/serve.log" 2>&1 &
  SVC_PID=$!
  run diqid-wait
  [ "$status" = 0 ] || { cat "$WORK/serve.log"; return 1; }
}

# Waits for the diqid-start that serve started to end; its exit status is in $status.
wait_served() {
  status=0
  wait "$SVC_PID" || status=$?
  SVC_PID=
}

# Fails unless that diqid-start ends within SECS seconds and, when STATUS is given,
# with that exit status. Usage: ends_within SECS [STATUS]
ends_within() {
  timeout "$1" sh -c "while kill -0 $SVC_PID 2>/dev/null; do sleep 0.1; done" || { echo "diqid-start still runs after $1 s" >&2; return 1; }
  wait_served
  [ -z "${2:-}" ] || [ "$status" = "$2" ] || { echo "diqid-start exited $status, not $2" >&2; return 1; }
}

@test "service mode serves the shim until SIGTERM, then stops cleanly and fast" {
  serve
  "$ROOT/tools/busybox-image" "$IMAGE"
  run docker run --rm "$IMAGE" echo served
  [ "$output" = served ]
  kill -TERM "$SVC_PID"
  ends_within 10 0
  grep -q "serving" "$WORK/serve.log"
  ! grep -q "did not power off" "$WORK/serve.log"
  no_qemu_left "$DIQID_RUNDIR"
}

@test "SIGTERM goes to CMD, and CMD's status (or 128+signal) is diqid-start's" {
  diqid-start sh -c "trap 'exit 7' TERM; touch '$WORK/up'; while :; do sleep 0.1; done" </dev/null >"$WORK/log" 2>&1 &
  pid=$!
  for _ in $(seq 1 3000); do [ -e "$WORK/up" ] && break; kill -0 $pid || break; sleep 0.1; done
  [ -e "$WORK/up" ]
  kill -TERM $pid
  status=0; wait $pid || status=$?
  [ "$status" = 7 ] || { cat "$WORK/log"; false; }
  no_qemu_left "$DIQID_RUNDIR"
  run diqid-start sh -c 'kill -9 $$'
  [ "$status" = 137 ]
  no_qemu_left "$DIQID_RUNDIR"
}

@test "QEMU killed: diqid-start notices at once, says why, exits 1, leaves nothing" {
  serve
  kill -9 "$(cat "$DIQID_RUNDIR/qemu.pid")"
  ends_within 5 1
  grep -q "QEMU exited" "$WORK/serve.log"
  no_qemu_left "$DIQID_RUNDIR"
  run docker ps
  [ "$status" = 1 ]
  [[ "$output" == *"no DiQiD VM runs"* ]]
}

@test "a kept volume survives QEMU killed in the middle of writes; no second VM may open it" {
  export DOCKER_VOLUME_FILE="$WORK/docker.qcow2" DOCKER_VOLUME_REMOVE=false
  serve
  "$ROOT/tools/busybox-image" "$IMAGE"
  docker run --rm -v data:/d "$IMAGE" sh -c 'dd if=/dev/urandom of=/d/file bs=1M count=8 2>/dev/null; md5sum /d/file > /d/sum; sync'
  # the same volume in a second instance: refused, readable, nothing left
  DIQID_RUNDIR=$(new_rundir) run diqid-start true
  [ "$status" = 2 ]
  [[ "$output" == *"is in use by another VM"* ]]
  # writes in flight, then QEMU dies
  docker run -d -v data:/d "$IMAGE" sh -c 'while :; do dd if=/dev/zero of=/d/scratch bs=1M count=4 2>/dev/null; done' >/dev/null
  sleep 2
  kill -9 "$(cat "$DIQID_RUNDIR/qemu.pid")"
  wait_served
  [ -f "$DOCKER_VOLUME_FILE" ]
  run diqid-start docker run --rm -v data:/d "$IMAGE" md5sum -c /d/sum
  [ "$status" = 0 ] || { echo "$output"; false; }
  [[ "$output" == *"/d/file: OK"* ]]
  no_qemu_left "$DIQID_RUNDIR"
}

@test "a full volume fails with the daemon's own error, recovers after a prune, and gives its space back" {
  export DOCKER_VOLUME_FILE="$WORK/small.qcow2" DOCKER_VOLUME_SIZE=1G DOCKER_VOLUME_REMOVE=false
  serve
  "$ROOT/tools/busybox-image" "$IMAGE"
  run docker run --name filler -v fill:/d "$IMAGE" dd if=/dev/zero of=/d/big bs=1M count=2048
  [ "$status" != 0 ]
  [[ "$output" == *"No space left on device"* ]]
  run docker run --rm "$IMAGE" true
  [ "$status" != 0 ]
  [[ "$output" == *"no space left on device"* ]] || { echo "$output"; false; }
  full=$(du -k "$DOCKER_VOLUME_FILE" | cut -f1)
  docker rm -f filler >/dev/null
  docker volume rm fill >/dev/null
  run docker run --rm "$IMAGE" echo recovered
  [ "$output" = recovered ]
  # ext4 discards the freed blocks; QEMU punches them out of the qcow2 file
  for _ in $(seq 1 100); do
    now=$(du -k "$DOCKER_VOLUME_FILE" | cut -f1)
    [ "$now" -lt $((full / 2)) ] && break
    sleep 0.2
  done
  [ "$now" -lt $((full / 2)) ] || { echo "volume file: $full KiB full, $now KiB after the prune"; false; }
  kill -TERM "$SVC_PID"; wait "$SVC_PID"; SVC_PID=
  no_qemu_left "$DIQID_RUNDIR"
}

@test "a second SIGTERM during shutdown cuts it short, leaving nothing behind" {
  serve
  "$ROOT/tools/busybox-image" "$IMAGE"
  # As its container's PID 1, sleep ignores SIGTERM: dockerd's stop waits ten seconds.
  docker run -d "$IMAGE" sleep 1000
  kill -TERM "$SVC_PID"; sleep 1; kill -TERM "$SVC_PID"
  ends_within 5
  grep -q "signal during shutdown; stopping QEMU now" "$WORK/serve.log" || { cat "$WORK/serve.log"; false; }
  no_qemu_left "$DIQID_RUNDIR"
}

@test "a guest kernel panic: diqid-start notices, shows the console, exits 1, leaves nothing" {
  serve
  "$ROOT/tools/busybox-image" "$IMAGE"
  timeout 60 docker run --rm --privileged "$IMAGE" sh -c 'echo c > /proc/sysrq-trigger' || true
  ends_within 30 1
  grep -q "QEMU exited" "$WORK/serve.log"
  grep -q "the guest kernel panicked: Kernel panic - not syncing: sysrq triggered crash" "$WORK/serve.log"
  no_qemu_left "$DIQID_RUNDIR"
}

@test "dockerd failing to start: its reason and log, exit 1, nothing left" {
  mkdir "$WORK/etc"
  echo '{"storage-driver": "no-such-driver"}' >"$WORK/etc/daemon.json"
  run "$ROOT/bats/with-etc-docker" "$WORK/etc" diqid-start true
  [ "$status" = 1 ]
  [[ "$output" == *"dockerd exited with status 1 before it answered: failed to start daemon: error initializing graphdriver: driver not supported; the console's last lines:"* ]]
  [[ "$output" == *"dockerd: time="* ]]
  no_qemu_left "$DIQID_RUNDIR"
}

@test "containerd killed under a serving VM: diqid-start says so, stops the VM, exits 1" {
  serve
  "$ROOT/tools/busybox-image" "$IMAGE"
  docker run -d --privileged --pid=host "$IMAGE" sh -c 'sleep 1; kill -9 $(pidof containerd)'
  ends_within 30 1
  grep -q "containerd exited with status 137" "$WORK/serve.log"
  no_qemu_left "$DIQID_RUNDIR"
}

@test "as PID 1 (a container's), diqid-start reaps orphans" {
  run unshare --pid --fork --mount-proc diqid-start sh -c '(sleep 1 &); (sleep 1 &); sleep 3; ps -eo pid=,ppid=,stat=,comm='
  [ "$status" = 0 ]
  printf '%s\n' "$output" | awk '$1 == 1 && $4 == "diqid-start"' | grep -q .
  # the orphans were children of PID 1: gone, not zombies
  ! printf '%s\n' "$output" | awk '$3 ~ /^Z/' | grep -q .
  ! printf '%s\n' "$output" | grep -q 'sleep'
  no_qemu_left "$DIQID_RUNDIR"
}

@test "a guest that stops answering is reported, and its return too" {
  serve
  qemu=$(cat "$DIQID_RUNDIR/qemu.pid")
  kill -STOP "$qemu"
  for _ in $(seq 1 450); do grep -q "has said nothing" "$WORK/serve.log" && break; sleep 0.1; done
  kill -CONT "$qemu"
  grep -q "diqid-start: warning: the VM has said nothing for 30 s; its kernel or init may hang" "$WORK/serve.log"
  for _ in $(seq 1 100); do grep -q "the VM answers again" "$WORK/serve.log" && break; sleep 0.1; done
  grep -q "the VM answers again, after" "$WORK/serve.log"
  run docker version --format '{{.Server.Version}}'
  [ "$status" = 0 ]
  kill -TERM "$SVC_PID"
  wait_served
  [ "$status" = 0 ]
  no_qemu_left "$DIQID_RUNDIR"
}

@test "the runtime directory removed under a serving VM: it stops, says why, exits 1" {
  serve
  rm -rf "$DIQID_RUNDIR"
  ends_within 10 1
  grep -q "the runtime directory $DIQID_RUNDIR vanished; stopping the VM" "$WORK/serve.log"
  no_qemu_left "$DIQID_RUNDIR"
}

@test "SIGTERM while the VM boots: stopped within docker stop's ten seconds, status 143, nothing left" {
  diqid-start </dev/null >"$WORK/boot.log" 2>&1 &
  SVC_PID=$!
  for _ in $(seq 1 300); do grep -q "Waiting for QEMU\.* \[OK\]" "$WORK/boot.log" && break; sleep 0.1; done
  sleep 1
  [ "$(cat "$DIQID_RUNDIR/state")" = booting ]
  kill -TERM "$SVC_PID"
  ends_within 9 143 || { cat "$WORK/boot.log"; false; }
  grep -q "signal 15 while the VM booted; stopping it" "$WORK/boot.log"
  no_qemu_left "$DIQID_RUNDIR"
}
