#!/usr/bin/env bats
# Bad input through the installed applet links (the full matrix is in tests/cli.rs).

load helpers

@test "bad configuration is refused with exit 2, naming the variable, starting nothing" {
  rundir=$(new_rundir); rmdir "$rundir"
  DIQID_RUNDIR=$rundir MEMORY=lots run diqid-start docker ps
  [ "$status" = 2 ]
  [ "$output" = 'diqid-start: MEMORY="lots" is not a size (for example MEMORY=1G)' ]
  [ ! -e "$rundir" ]
  ! pgrep -f "diqid.rundir=$rundir"
}

@test "the docker shim says in one line that no VM runs" {
  DIQID_RUNDIR=/tmp/diqid-none-$$ run docker ps
  [ "$status" = 1 ]
  [[ "$output" == "docker: no DiQiD VM runs"* ]]
  [ "${#lines[@]}" = 1 ]
}

@test "a daemon.json that sets what DiQiD owns, or is not JSON, is refused by name" {
  etc=$(mktemp -d /tmp/diqid-etc.XXXXXX)
  rundir=$(new_rundir); rmdir "$rundir"
  echo '{"debug": true, "hosts": ["tcp://0.0.0.0:2375"]}' >"$etc/daemon.json"
  DIQID_RUNDIR=$rundir run "$ROOT/bats/with-etc-docker" "$etc" diqid-start docker ps
  [ "$status" = 2 ]
  [[ "$output" == 'diqid-start: /etc/docker/daemon.json sets "hosts", which DiQiD needs to set itself'* ]]
  echo '{"debug": tru' >"$etc/daemon.json"
  DIQID_RUNDIR=$rundir run "$ROOT/bats/with-etc-docker" "$etc" diqid-start docker ps
  [ "$status" = 2 ]
  [[ "$output" == 'diqid-start: /etc/docker/daemon.json is not valid JSON: '* ]]
  rm -rf "$etc"
  [ ! -e "$rundir" ]
}

@test "a volume in a read-only directory, or a read-only volume, is refused with nothing touched" {
  dir=$(mktemp -d /tmp/diqid-ro.XXXXXX)
  qemu-img create -q -f qcow2 "$dir/kept.qcow2" 1G
  before=$(sha256sum "$dir/kept.qcow2")
  rundir=$(new_rundir); rmdir "$rundir"
  # A read-only bind mount in a mount namespace of its own: root ignores permission bits.
  run unshare --mount sh -c "mount --bind '$dir' '$dir' && mount -o remount,bind,ro '$dir' &&
    DIQID_RUNDIR=$rundir DOCKER_VOLUME_FILE='$dir/new.qcow2' diqid-start true; echo status=\$?;
    DIQID_RUNDIR=$rundir DOCKER_VOLUME_FILE='$dir/kept.qcow2' diqid-start true; echo status=\$?"
  [[ "${lines[0]}" == "diqid-start: DOCKER_VOLUME_FILE=$dir/new.qcow2: the directory $dir is not writable"* ]]
  [ "${lines[1]}" = status=2 ]
  [ "${lines[2]}" = "diqid-start: DOCKER_VOLUME_FILE=$dir/kept.qcow2 is not readable and writable (read-only, or not this user's)" ]
  [ "${lines[3]}" = status=2 ]
  [ ! -e "$dir/new.qcow2" ]
  [ "$(sha256sum "$dir/kept.qcow2")" = "$before" ]
  [ ! -e "$rundir" ]
  rm -rf "$dir"
}
