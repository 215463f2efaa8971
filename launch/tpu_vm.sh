#!/usr/bin/env bash
# Train on a Cloud TPU VM or pod slice: create it, copy this repository to every worker,
# install it, run `python -m lm.main` on all workers at once (streaming their logs), and
# delete the TPU at the end, also on failure or Ctrl-C.
#
#   launch/tpu_vm.sh --name=lm-v5e --zone=us-west4-a --accelerator-type=v5litepod-16 \
#     --config=configs/llama_1b.py --workdir=gs://my-bucket/lm/llama_1b -- --config.train.steps=1000
#
# On a TPU VM, lm.main finds the other workers by itself (jax.distributed's TPU
# auto-detection), so every worker runs the same command. Use a gs:// workdir on a pod:
# the workers share it for checkpoints.
set -euo pipefail

PROG=launch/tpu_vm.sh

usage() {
  cat <<EOF
usage: $PROG --name=NAME --zone=ZONE --accelerator-type=TYPE --workdir=DIR [options] [-- overrides]

Creates the TPU VM (or pod slice) NAME, installs this repository on every worker, runs
'python -m lm.main --config=CONFIG --workdir=DIR [overrides]' on all workers and deletes
the TPU when that ends (success, failure or Ctrl-C), unless --keep.

required:
  --name=NAME               TPU name (created, then deleted)
  --zone=ZONE               e.g. us-central2-b, us-west4-a
  --accelerator-type=TYPE   e.g. v4-8, v4-32, v5litepod-16, v5p-128
  --workdir=DIR             the run's workdir; gs://bucket/path for a pod (shared)
options:
  --config=FILE             config file inside this repository (default configs/default.py)
  --version=VERSION         TPU software version (default tpu-ubuntu2204-base, for v4/v5p;
                            v5e: v2-alpha-tpuv5-lite, v6e: v2-alpha-tpuv6e)
  --project=PROJECT         GCP project (default: gcloud's configured project)
  --spot                    create a Spot (preemptible) TPU
  --reuse                   the TPU already exists: skip creating it
  --keep                    do not delete the TPU at the end
  --jax=SPEC                pip requirement installed for the TPU (default 'jax[tpu]')
  --dry-run                 print every command (gcloud, tar) instead of running it
  -h, --help                this message
Everything after '--' is passed to lm.main, e.g. -- --config.train.steps=1000
EOF
}

usage_error() {
  echo "$PROG: $1" >&2
  echo "run '$PROG --help' for the flags" >&2
  exit 2
}

name="" zone="" accel="" workdir="" config="configs/default.py"
version="tpu-ubuntu2204-base" project="" jax_spec="jax[tpu]"
spot=0 reuse=0 keep=0 dry_run=0
while (($#)); do
  arg=$1
  case "$arg" in
    --) shift; break ;;
    -h|--help) usage; exit 0 ;;
    --spot) spot=1; shift; continue ;;
    --reuse) reuse=1; shift; continue ;;
    --keep) keep=1; shift; continue ;;
    --dry-run|--dry_run) dry_run=1; shift; continue ;;
    --*=*) key=${arg%%=*}; value=${arg#*=}; shift ;;
    --*)
      (($# >= 2)) || usage_error "$arg needs a value"
      key=$arg; value=$2; shift 2 ;;
    *) usage_error "unexpected argument '$arg' (lm.main overrides go after '--')" ;;
  esac
  case "$key" in
    --name) name=$value ;;
    --zone) zone=$value ;;
    --accelerator-type|--accelerator_type|--type) accel=$value ;;
    --workdir) workdir=$value ;;
    --config) config=$value ;;
    --version) version=$value ;;
    --project) project=$value ;;
    --jax) jax_spec=$value ;;
    *) usage_error "unknown flag '$key'" ;;
  esac
done
overrides=("$@")

missing=()
[[ -n "$name" ]] || missing+=(--name)
[[ -n "$zone" ]] || missing+=(--zone)
[[ -n "$accel" ]] || missing+=(--accelerator-type)
[[ -n "$workdir" ]] || missing+=(--workdir)
((${#missing[@]} == 0)) || usage_error "missing required flag(s): ${missing[*]}"
[[ "$name" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] \
  || usage_error "--name='$name' must be lowercase letters, digits and '-', starting with a letter"
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[[ -f "$repo/$config" ]] \
  || usage_error "--config=$config is not a file of this repository ($repo); it is copied to the workers"
for o in "${overrides[@]}"; do
  [[ "$o" == --* ]] || usage_error "override '$o' must be a flag such as --config.train.steps=100"
done

where=(--zone="$zone")
[[ -n "$project" ]] && where+=(--project="$project")

shquote() {  # one argument as shell input: bare when safe, else in single quotes
  if [[ "$1" =~ ^[-A-Za-z0-9_./:=@,+%]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

quote() {  # all arguments as one line of shell input (the dry-run print, a remote --command)
  local out="" a
  for a in "$@"; do out+="$(shquote "$a") "; done
  printf '%s' "${out% }"
}

run() {  # prints a command; runs it unless --dry-run
  printf '+ %s\n' "$(quote "$@")"
  ((dry_run)) || "$@"
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if ((keep)); then
    echo "$PROG: keeping $name (delete it with: gcloud compute tpus tpu-vm delete $name ${where[*]} --quiet)" >&2
  else
    echo "$PROG: deleting $name" >&2
    run gcloud compute tpus tpu-vm delete "$name" "${where[@]}" --quiet || status=1
  fi
  [[ -n "${tmp:-}" ]] && rm -rf "$tmp"
  exit "$status"
}

tmp=$(mktemp -d)
# Set before creating: a creation that fails half way can still leave a TPU behind.
trap cleanup EXIT
trap 'exit 130' INT TERM
if ((!reuse)); then
  create=(gcloud compute tpus tpu-vm create "$name" "${where[@]}" --accelerator-type="$accel"
          --version="$version")
  ((spot)) && create+=(--spot)
  run "${create[@]}"
fi

# The repository's tracked files (or, outside git, everything but workdirs and .git).
archive="$tmp/lm.tar.gz"
if git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
  printf '+ (cd %s && git ls-files -z | tar -czf %s --null -T -)\n' "$(shquote "$repo")" \
    "$(shquote "$archive")"
  ((dry_run)) || (cd "$repo" && git ls-files -z | tar -czf "$archive" --null -T -)
else
  run tar -czf "$archive" -C "$repo" --exclude=.git --exclude=workdirs .
fi
run gcloud compute tpus tpu-vm scp "$archive" "$name":lm.tar.gz "${where[@]}" --worker=all

install="set -e; rm -rf ~/lm && mkdir -p ~/lm && tar -xzf ~/lm.tar.gz -C ~/lm && cd ~/lm"
install+=" && python3 -m pip install -q -U $(quote "$jax_spec") && python3 -m pip install -q -e ."
run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all --command="$install"

# Every worker runs the same command; each line of its log is prefixed with its host name.
train="set -o pipefail; cd ~/lm && PYTHONUNBUFFERED=1 python3 -m lm.main $(quote "--config=$config" "--workdir=$workdir" "${overrides[@]}")"
train+=' 2>&1 | sed -u "s/^/[$(hostname)] /"'
run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all --command="$train"
