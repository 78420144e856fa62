# Shared by the end-to-end tests: they boot real VMs with the applets of this checkout.

ROOT=$(cd "$BATS_TEST_DIRNAME/.." && pwd)
export PATH="$ROOT/applets:$PATH"
export DIQID_ACCEL=${DIQID_ACCEL:-tcg}   # the auto probe has its own test
export MEMORY=${MEMORY:-1G}
IMAGE=diqid-test/busybox

# A runtime directory of its own for each VM: short, as the kernel command line wants.
new_rundir() {
  mktemp -d /tmp/diqid-bats.XXXXXX
}

# Starts a VM that serves until `stop_vm`: diqid-start runs a CMD that imports the
# test image, says so, and waits. Sets VM_RUNDIR, VM_PID, VM_LOG. Arguments, if any,
# are a command that runs diqid-start (a wrapper such as bats/with-etc-docker DIR).
start_vm() {
  VM_RUNDIR=$(new_rundir)
  VM_LOG="$VM_RUNDIR.log"
  export DIQID_RUNDIR="$VM_RUNDIR"
  # A wrapper that drops to another user gets the runtime directory handed over.
  [ -z "${VM_OWNER:-}" ] || chown "$VM_OWNER" "$VM_RUNDIR"
  "$@" diqid-start sh -c "'$ROOT/tools/busybox-image' $IMAGE && touch '$VM_RUNDIR.up' && while [ ! -e '$VM_RUNDIR.stop' ]; do sleep 0.1; done; exit 3" \
    </dev/null >"$VM_LOG" 2>&1 &
  VM_PID=$!
  for _ in $(seq 1 6000); do
    [ -e "$VM_RUNDIR.up" ] && return 0
    kill -0 "$VM_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "the VM did not come up:" >&2
  cat "$VM_LOG" >&2
  return 1
}

# Stops the VM that start_vm started and checks that it ended as it should.
stop_vm() {
  touch "$VM_RUNDIR.stop"
  local status=0
  wait "$VM_PID" || status=$?
  cat "$VM_LOG" >&2
  rm -f "$VM_RUNDIR.up" "$VM_RUNDIR.stop" "$VM_LOG"
  [ "$status" = 3 ] || { echo "diqid-start exited $status, not CMD's 3" >&2; return 1; }
  no_qemu_left "$VM_RUNDIR"
}

# Fails if a QEMU of this runtime directory still runs, or the directory remains.
no_qemu_left() {
  if pgrep -f "diqid.rundir=$1" >/dev/null; then
    echo "a QEMU of $1 is still running" >&2
    return 1
  fi
  if [ -e "$1" ]; then
    echo "$1 is left behind: $(ls -A "$1")" >&2
    return 1
  fi
}
