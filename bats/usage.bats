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
