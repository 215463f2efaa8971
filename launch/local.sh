#!/usr/bin/env bash
# A multi-host job in miniature: N `python -m lm.main` processes on this machine, each
# with M fake CPU devices, joined by a coordinator on a free 127.0.0.1 port.
#
#   launch/local.sh -n 2 -d 4 -- --config=configs/default.py --workdir=/tmp/lm-2x4
#
# Every output line is prefixed with its process ([p0], [p1], ...). The exit status is the
# worst of the processes'; when one fails the others are stopped. Ctrl-C interrupts all of
# them (each saves a checkpoint, as a single `lm.main` does); a second Ctrl-C kills them.
set -uo pipefail

PROG=launch/local.sh
GRACE_S=${LM_LOCAL_GRACE_S:-30}  # after a failure or Ctrl-C, SIGKILL what is left after this

usage() {
  cat <<EOF
usage: $PROG -n N -d M [--port P] [--dry-run] -- [lm.main flags ...]

Runs N processes of 'python -m lm.main' on this machine, each seeing M fake CPU devices
(JAX_PLATFORMS=cpu, XLA_FLAGS=--xla_force_host_platform_device_count=M), as one job of
N*M devices: process i gets --coordinator_address=127.0.0.1:P --num_processes=N
--process_id=i. Everything after '--' goes to every process unchanged.

  -n N         number of processes (>= 1)
  -d M         fake CPU devices per process (>= 1)
  --port P     coordinator port (default: a free port)
  --dry-run    print the N commands instead of running them
  -h, --help   this message

environment: PYTHON (default python3) runs lm.main; LM_LOCAL_GRACE_S (default 30)
seconds before processes that ignore Ctrl-C are killed.
example: $PROG -n 2 -d 4 -- --config=configs/default.py --workdir=/tmp/lm-2x4
EOF
}

usage_error() {
  echo "$PROG: $1" >&2
  echo "run '$PROG --help' for the flags" >&2
  exit 2
}

is_positive_int() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }

num=""
devices=""
port=""
dry_run=0
while (($#)); do
  case "$1" in
    -n|-d|--port)
      (($# >= 2)) || usage_error "$1 needs a value"
      case "$1" in -n) num=$2 ;; -d) devices=$2 ;; --port) port=$2 ;; esac
      shift 2 ;;
    -n=*|--num=*) num=${1#*=}; shift ;;
    -d=*|--devices=*) devices=${1#*=}; shift ;;
    --port=*) port=${1#*=}; shift ;;
    --dry-run|--dry_run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) usage_error "unknown argument '$1' (lm.main flags go after '--')" ;;
  esac
done
[[ -n "$num" ]] || usage_error "-n N (the number of processes) is required"
[[ -n "$devices" ]] || usage_error "-d M (fake CPU devices per process) is required"
is_positive_int "$num" || usage_error "-n must be a positive integer, got '$num'"
is_positive_int "$devices" || usage_error "-d must be a positive integer, got '$devices'"
if [[ -n "$port" ]] && { ! is_positive_int "$port" || ((port > 65535)); }; then
  usage_error "--port must be a port number (1-65535), got '$port'"
fi

python=${PYTHON:-python3}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z "$port" ]]; then
  # The OS picks a free port; a process binding it a moment later could still race us.
  port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') \
    || { echo "$PROG: cannot run '$python' to find a free port; set PYTHON" >&2; exit 2; }
fi
# Our device count replaces any the caller's XLA_FLAGS set; their other XLA flags stay.
xla_flags=$(printf '%s' "${XLA_FLAGS:-}" \
  | sed -E 's/--xla_force_host_platform_device_count=[^ ]*//g; s/  +/ /g; s/^ //; s/ $//')
xla_flags="${xla_flags:+$xla_flags }--xla_force_host_platform_device_count=$devices"
xla_flags=${xla_flags# }

command_for() {  # the argv of process $1, in the array `cmd`
  cmd=(env "PYTHONPATH=$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 JAX_PLATFORMS=cpu
       "XLA_FLAGS=$xla_flags" "$python" -m lm.main "${args[@]}"
       "--coordinator_address=127.0.0.1:$port" "--num_processes=$num" "--process_id=$1")
}

args=("$@")
if ((dry_run)); then
  for ((i = 0; i < num; i++)); do
    command_for "$i"
    printf '[p%d] ' "$i"
    printf '%q ' "${cmd[@]}"
    printf '\n'
  done
  exit 0
fi

prefix_lines() {  # copies stdin to stdout line by line (unbuffered), each line after $1
  local line
  while IFS= read -r line || [[ -n "$line" ]]; do printf '%s%s\n' "$1" "$line"; done
}

# Job control while starting them puts each process (with its log prefixer) in a process
# group of its own, so that the signals below reach the whole group and a Ctrl-C at the
# terminal reaches only this script, which passes it on. The prefixer ignores SIGINT so a
# process can still log while it saves its checkpoint.
set -m
pids=()
for ((i = 0; i < num; i++)); do
  command_for "$i"
  ( "${cmd[@]}" 2>&1 | (trap '' INT; prefix_lines "[p$i] ")
    exit "${PIPESTATUS[0]}" ) &
  pids+=("$!")
done
set +m
echo "$PROG: started $num processes x $devices devices, coordinator 127.0.0.1:$port" >&2

stopping=0
stop_deadline=0
stop_all() {  # $1: signal; stops every process group still running
  for pid in "${pids[@]}"; do
    [[ -n "$pid" ]] && kill "-$1" -- "-$pid" 2>/dev/null
  done
}
on_interrupt() {
  if ((stopping)); then
    echo "$PROG: killing all processes" >&2
    stop_all KILL
  else
    echo "$PROG: interrupting all processes (Ctrl-C again to kill them)" >&2
    stopping=1
    stop_deadline=$((SECONDS + GRACE_S))
    stop_all INT
  fi
}
trap on_interrupt INT TERM

worst=0
running=$num
while ((running > 0)); do
  for i in "${!pids[@]}"; do
    pid=${pids[$i]}
    [[ -z "$pid" ]] && continue
    kill -0 "$pid" 2>/dev/null && continue
    wait "$pid"
    status=$?
    pids[i]=""
    running=$((running - 1))
    ((status > worst)) && worst=$status
    if ((status != 0)); then
      echo "$PROG: process $i exited with status $status" >&2
      if ((!stopping && running > 0)); then
        echo "$PROG: stopping the other processes" >&2
        stopping=1
        stop_deadline=$((SECONDS + GRACE_S))
        stop_all INT
      fi
    fi
  done
  if ((stopping && running > 0 && SECONDS >= stop_deadline)); then
    echo "$PROG: processes still running after ${GRACE_S}s; killing them" >&2
    stop_all KILL
    stop_deadline=$((SECONDS + 3600))
  fi
  ((running > 0)) && sleep 0.2
done
exit "$worst"
