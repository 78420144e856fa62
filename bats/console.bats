#!/usr/bin/env bats
# diqid-console against a real VM's serial console, driven through tmux. Markers
# that the tests wait for are computed by the shell ($((...))), so that the typed
# command line itself never matches.

load helpers

setup_file() {
  start_vm
  export VM_RUNDIR VM_PID VM_LOG
  export TMUX_TMPDIR=$(mktemp -d /tmp/diqid-tmux.XXXXXX)
}

teardown_file() {
  tmux kill-server 2>/dev/null || true
  rm -rf "$TMUX_TMPDIR"
  stop_vm
}

teardown() {
  tmux kill-session -t t 2>/dev/null || true
}

# Waits until the tmux pane shows TEXT (COUNT times, default once; up to 60 s).
wait_for_pane() {
  for _ in $(seq 1 600); do
    [ "$(tmux capture-pane -p -t t -S -200 | grep -cF -- "$1")" -ge "${2:-1}" ] && return 0
    sleep 0.1
  done
  echo "the pane never showed '$1':" >&2
  tmux capture-pane -p -t t -S -200 >&2
  return 1
}

@test "log in as root without a password, run a command, detach with ^], terminal restored" {
  tmux new-session -d -s t -x 120 -y 40 "env PATH='$PATH' DIQID_RUNDIR='$VM_RUNDIR' sh"
  tmux send-keys -t t "stty -g > $BATS_TEST_TMPDIR/before; diqid-console; stty -g > $BATS_TEST_TMPDIR/after; echo DETACHED-\$?" Enter
  wait_for_pane "detaches"
  tmux send-keys -t t Enter
  wait_for_pane "diqid login:"
  tmux send-keys -t t root Enter
  wait_for_pane "This is the DiQiD VM"
  tmux send-keys -t t 'echo "answer-$((6*7)) $(hostname) $(tty)"' Enter
  wait_for_pane "answer-42 diqid /dev/ttyS0"
  # job control: a background job is listed
  tmux send-keys -t t 'sleep 300 & jobs; echo "JOBS-$((1+1))"' Enter
  wait_for_pane "JOBS-2"
  tmux capture-pane -p -t t -S -200 | grep -q '^\[1\]'
  # job control: the shell owns the terminal's foreground process group
  tmux send-keys -t t 'echo "MON-$(set -o | grep -c "^monitor.*on")$((7*11))"' Enter
  wait_for_pane "MON-177"
  ! tmux capture-pane -p -t t -S -200 | grep -q 'no job control'
  # a second client is refused in one line, without a hang
  run timeout 10 diqid-console
  [ "$status" = 1 ]
  [ "$output" = "diqid-console: another diqid-console is attached to this VM; a serial console takes one client at a time" ]
  tmux send-keys -t t 'kill %1; exit' Enter
  wait_for_pane "diqid login:" 2   # a new login after logout
  tmux send-keys -t t C-]
  wait_for_pane "DETACHED-0"
  [ "$(cat "$BATS_TEST_TMPDIR/before")" = "$(cat "$BATS_TEST_TMPDIR/after")" ]
  tmux kill-session -t t
}

@test "SIGTERM and SIGHUP restore the terminal too" {
  for sig in TERM HUP; do
    tmux new-session -d -s t -x 120 -y 40 "env PATH='$PATH' DIQID_RUNDIR='$VM_RUNDIR' sh"
    tmux send-keys -t t "stty -g > $BATS_TEST_TMPDIR/before; diqid-console; stty -g > $BATS_TEST_TMPDIR/after; echo GONE-\$((1+1))$sig" Enter
    wait_for_pane "detaches"
    pkill -$sig -f '^diqid-console$'
    wait_for_pane "GONE-2$sig"
    [ "$(cat "$BATS_TEST_TMPDIR/before")" = "$(cat "$BATS_TEST_TMPDIR/after")" ]
    tmux kill-session -t t
  done
}

@test "pipe mode: input is sent, output printed, and it ends after input ends" {
  run timeout 60 sh -c "printf 'root\n' | diqid-console --drain 3 >/dev/null; printf 'echo piped-\$((2+3))\nexit\n' | diqid-console --drain 3"
  [ "$status" = 0 ]
  [[ "$output" == *"piped-5"* ]] || { echo "$output"; false; }
}

@test "a new login appears after logout, and the log shows the whole console" {
  run diqid-console --log
  [ "$status" = 0 ]
  [[ "$output" == *"diqid login:"* ]]
  # the last thing the console shows after the pipe test's logout is a fresh prompt
  last=$(diqid-console --log | tr -d '\r' | grep -v '^$' | tail -1)
  [[ "$last" == *"diqid login:"* ]]
}

@test "the password-less root exists only inside the VM" {
  root_hash=$(awk -F: '$1 == "root" {print $2}' /etc/shadow)
  [ -n "$root_hash" ]
  grep -q '^root:[^:]*:0:0:[^:]*:/root:' /etc/passwd
}

@test "bad flags are usage errors" {
  run diqid-console --escape ctrl-x
  [ "$status" = 2 ]
  [[ "$output" == *"--escape"* ]]
  run diqid-console --follow
  [ "$status" = 2 ]
}
