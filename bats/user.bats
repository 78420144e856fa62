#!/usr/bin/env bats
# DiQiD run by an unprivileged outer user (uid 1000, no capabilities, a home of its
# own), as the image runs under `--user 1000:1000`. The VM serves in service mode;
# the first test catches it booting to see that the shim waits.

load helpers

USER_ID=1000

# as_user COMMAND...: runs COMMAND as uid 1000 with no capabilities and its own home.
as_user() {
  (exec_as_user "$@")
}
# The same in place of the calling shell: `(exec_as_user CMD) &` makes $! CMD's pid.
exec_as_user() {
  exec setpriv --reuid $USER_ID --regid $USER_ID --clear-groups --inh-caps=-all --bounding-set=-all \
    env HOME="$UHOME" PATH="$PATH" DIQID_RUNDIR="$VM_RUNDIR" DIQID_ACCEL="$DIQID_ACCEL" "$@"
}

setup_file() {
  touch /tmp/diqid-bats.user-marker
  export UHOME=$(mktemp -d /tmp/diqid-home.XXXXXX)
  chown $USER_ID:$USER_ID "$UHOME"
  export VM_RUNDIR=$(new_rundir)
  chown $USER_ID:$USER_ID "$VM_RUNDIR"
  export VM_LOG="$UHOME.log"
  cd "$UHOME"
  (exec_as_user diqid-start) </dev/null >"$VM_LOG" 2>&1 3>&- &
  export VM_PID=$!
  for _ in $(seq 1 300); do [ -s "$VM_RUNDIR/state" ] && break; sleep 0.1; done
}

teardown_file() {
  kill -TERM "$VM_PID"
  local status=0
  wait "$VM_PID" || status=$?
  cat "$VM_LOG" >&2
  rm -rf "$UHOME" "$VM_LOG"
  [ "$status" = 0 ]
  no_qemu_left "$VM_RUNDIR"
}

@test "the shim waits for a VM that is still booting, then works" {
  [ "$(cat "$VM_RUNDIR/state")" = booting ]
  run as_user docker version --format '{{.Server.Version}}'
  [ "$status" = 0 ]
  [[ "$output" == *"Waiting for the DiQiD VM"*"[OK]"* ]]
  [[ "${lines[-1]}" == 20.* ]]
  as_user "$ROOT/tools/busybox-image" "$IMAGE"
}

@test "QEMU runs as the user, without capabilities" {
  pid=$(cat "$VM_RUNDIR/qemu.pid")
  [ "$(ps -o uid= -p "$pid" | tr -d ' ')" = $USER_ID ]
  grep -q '^CapEff:[[:space:]]*0000000000000000$' "/proc/$pid/status"
}

@test "a privileged container works, and what it writes to a bind mount is the user's" {
  run as_user docker run --rm --privileged "$IMAGE" sh -c 'ip link add d0 type dummy && echo ok'
  [ "$status" = 0 ]
  [ "$output" = ok ]
  as_user mkdir "$UHOME/w"
  as_user docker run --rm -v "$UHOME/w:/w" "$IMAGE" sh -c 'echo inside > /w/made && mkdir /w/dir && id -u'
  [ "$(stat -c %u "$UHOME/w/made")" = $USER_ID ]
  [ "$(stat -c %u "$UHOME/w/dir")" = $USER_ID ]
  [ "$(cat "$UHOME/w/made")" = inside ]
}

@test "a port published under the user answers on the loopback" {
  as_user docker run -d --name uweb -p 18181:80 "$IMAGE" sh -c 'echo hello user > /index.html && exec httpd -f -p 80 -h /'
  out=""
  for _ in $(seq 1 100); do out=$(curl -fsS --max-time 2 http://127.0.0.1:18181/index.html 2>/dev/null) && break; sleep 0.2; done
  as_user docker rm -f uweb
  [ "$out" = "hello user" ]
}

@test "the user wrote nothing outside its home and the runtime directory" {
  run find /tmp /var/tmp /dev/shm /etc /var /usr /root -xdev -user $USER_ID -newer /tmp/diqid-bats.user-marker \
    -not -path "$UHOME" -not -path "$UHOME/*" -not -path "$VM_RUNDIR" -not -path "$VM_RUNDIR/*"
  [ -z "$output" ] || { echo "written outside: $output"; false; }
}
