"""The launchers in launch/: their dry runs print the right commands, bad arguments are usage
errors, and the local and SLURM launchers start, number, watch and stop their processes.

Stand-ins replace only what a test machine lacks: `gcloud` and `srun` record or replay their
arguments, and a stand-in interpreter plays `python -m lm.main` (it prints what it was
given) so that no test trains a model.
"""

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = next(p for p in Path(__file__).resolve().parents if (p / 'setup.py').is_file())
LAUNCH = REPO / 'launch'
SCRIPTS = ['local.sh', 'tpu_vm.sh', 'slurm.sbatch']

# Plays `python -m lm.main`: prints its process id, its argv and what the launcher set in
# its environment; FAKE_MODE=exit exits with its process id (ignoring the launcher's Ctrl-C
# to the others once process 1 has failed, which would otherwise race with process 2's own
# exit), FAKE_MODE=fail makes process 1 fail, otherwise it runs for ~120 s (the tests stop
# it long before). `-c` (the free-port probe) goes to the real Python.
FAKE_PYTHON = textwrap.dedent(f"""\
    #!/usr/bin/env bash
    if [[ "${{FAKE_MODE:-}}" == exit ]]; then trap '' INT; fi
    if [[ "$1" == -c ]]; then exec {sys.executable} "$@"; fi
    id=""; for a in "$@"; do case "$a" in --process_id=*) id=${{a#*=}};; esac; done
    if [[ "${{FAKE_MODE:-}}" != exit ]]; then trap 'echo "interrupted id=$id"; exit 130' INT; fi
    gpus=${{CUDA_VISIBLE_DEVICES:-all}}
    devs=$JAX_LOCAL_DEVICE_IDS
    echo "id=$id xla=$XLA_FLAGS platforms=$JAX_PLATFORMS gpus=$gpus devs=$devs argv=$*"
    if [[ "${{FAKE_MODE:-}}" == exit ]]; then exit "$id"; fi
    # FAKE_READY (a directory): each process marks itself started there, with its Ctrl-C
    # trap set, and process 1 fails only once all 3 have, so none is stopped before its trap.
    if [[ -n "${{FAKE_READY:-}}" ]]; then touch "$FAKE_READY/$id"; fi
    if [[ "${{FAKE_MODE:-}}" == fail && "$id" == 1 ]]; then
      for i in $(seq 600); do
        (( $(ls "${{FAKE_READY:-/}}" | wc -l) >= 3 )) && break; sleep 0.1
      done
      echo failing; exit 3
    fi
    # Far longer than any test waits: "finished" can only mean a signal that never came.
    for i in $(seq 1200); do sleep 0.1; done
    echo finished
    """)

# Records every call; fails the subcommands named in GCLOUD_FAIL (e.g. 'ssh').
FAKE_GCLOUD = textwrap.dedent(f"""\
    #!{sys.executable}
    import os, shlex, sys
    with open(os.environ['GCLOUD_LOG'], 'a') as f:
      f.write(shlex.join(sys.argv[1:]) + '\\n')
    fail = os.environ.get('GCLOUD_FAIL', '')
    sys.exit(1 if fail and fail in sys.argv[1:5] else 0)
    """)

# Replays srun: runs the trailing `bash -c TASK` once per task with the job step's
# environment as srun sets it (SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS, SLURM_STEP_*);
# FAKE_SRUN_BIND_GPU=1 plays a site that binds one GPU to each task (CUDA_VISIBLE_DEVICES).
FAKE_SRUN = textwrap.dedent(f"""\
    #!{sys.executable}
    import os, subprocess, sys
    args = sys.argv[1:]
    opts = dict(a[2:].split('=', 1) for a in args if a.startswith('--') and '=' in a)
    i = args.index('bash')
    ntasks, per_node = int(opts['ntasks']), int(opts['ntasks-per-node'])
    status = 0
    for rank in range(ntasks):
      env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank % per_node),
                 SLURM_NODEID=str(rank // per_node), SLURM_NTASKS=str(ntasks),
                 SLURM_STEP_NUM_NODES=opts['nodes'],
                 SLURM_STEP_NODELIST=os.environ.get('SLURM_JOB_NODELIST', 'localhost'))
      if os.environ.get('FAKE_SRUN_BIND_GPU'):
        env['CUDA_VISIBLE_DEVICES'] = str(rank % per_node)
      status = max(status, subprocess.run(args[i:], env=env).returncode)
    sys.exit(status)
    """)

# Plays `python -m lm.main` on a node with SLURM_GPUS_ON_NODE GPUs: takes the distributed
# flags as lm.main passes them to jax.distributed.initialize, lets jax's own code decide the
# local devices (its SLURM detection, jax/_src/clusters), and prints which of the node's
# physical GPUs the process ends up with: CUDA_VISIBLE_DEVICES (as SLURM left it) indexed
# by them.
FAKE_JAX_PYTHON = textwrap.dedent(f"""\
    #!{sys.executable}
    import json, os, sys
    from jax._src import clusters
    flags = dict(a[2:].split('=', 1) for a in sys.argv[3:] if a.startswith('--') and '=' in a)
    pid, n = flags.get('process_id'), flags.get('num_processes')
    # jax.distributed.initialize, given no local_device_ids (jax/_src/distributed.py):
    ids = os.environ.get('JAX_LOCAL_DEVICE_IDS')
    ids = [int(x) for x in ids.split(',')] if ids else None
    coordinator, n, pid, ids = clusters.ClusterEnv.auto_detect_unset_distributed_params(
        flags.get('coordinator_address'), n and int(n), pid and int(pid), ids, None, 300)
    visible = os.environ.get('CUDA_VISIBLE_DEVICES') or ','.join(
        map(str, range(int(os.environ['SLURM_GPUS_ON_NODE']))))
    visible = visible.split(',')
    gpus = [visible[i] if i < len(visible) else f'invisible:{{i}}'
            for i in ids or range(len(visible))]
    print('JAX ' + json.dumps({{'node': int(os.environ['SLURM_NODEID']), 'process_id': pid,
                               'num_processes': n, 'coordinator': coordinator, 'gpus': gpus}}))
    """)


@pytest.fixture(scope='module')
def fakes(tmp_path_factory) -> Path:
  bin_dir = tmp_path_factory.mktemp('fake_bin')
  for name, text in (('python', FAKE_PYTHON), ('gcloud', FAKE_GCLOUD), ('srun', FAKE_SRUN),
                     ('jax_python', FAKE_JAX_PYTHON)):
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)
  return bin_dir


def _env(fakes: Path, **extra) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if not k.startswith(('SLURM_', 'LM_'))}
  env['PATH'] = f'{fakes}{os.pathsep}{env["PATH"]}'
  env.update(extra)
  return env


def _run(script: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
  return subprocess.run(['bash', str(LAUNCH / script), *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize('script', SCRIPTS)
def test_scripts_parse_and_have_help(script, fakes):
  assert subprocess.run(['bash', '-n', str(LAUNCH / script)], check=False).returncode == 0
  r = _run(script, '--help', env=_env(fakes))
  assert r.returncode == 0 and f'launch/{script}' in r.stdout, r.stdout


# ---- TPU VM ---------------------------------------------------------------------------------

TPU_ARGS = ['--name=lm-test', '--zone=us-central2-b', '--accelerator-type=v4-32',
            '--config=configs/llama_1b.py', '--workdir=gs://bucket/runs/1b', '--project=proj']


def _commands(stdout: str) -> list[list[str]]:
  return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith('+ ')]


def test_tpu_vm_dry_run_prints_create_install_train_delete(fakes, tmp_path):
  log = tmp_path / 'gcloud.log'
  r = _run('tpu_vm.sh', *TPU_ARGS, '--dry-run', '--', '--config.train.steps=100',
           "--config.data.path=/data/it's here", env=_env(fakes, GCLOUD_LOG=str(log)))
  assert r.returncode == 0, r.stderr
  assert not log.exists()  # a dry run calls nothing
  gcloud = [c for c in _commands(r.stdout) if c[0] == 'gcloud']
  verbs = [c[4] for c in gcloud]
  assert verbs == ['create', 'scp', 'ssh', 'ssh', 'delete']
  for c in gcloud:
    assert c[:4] == ['gcloud', 'compute', 'tpus', 'tpu-vm']
    assert '--zone=us-central2-b' in c and '--project=proj' in c
  create, scp, install, train, delete = gcloud
  assert create[5] == 'lm-test' and '--accelerator-type=v4-32' in create
  assert '--worker=all' in scp
  assert scp[6] == 'lm-test:lm.tar.gz'
  for ssh in (install, train):
    assert ssh[5] == 'lm-test' and '--worker=all' in ssh
  assert 'pip install' in install[-1] and '-e .' in install[-1]
  remote = shlex.split(next(a for a in train if a.startswith('--command='))[len('--command='):])
  main = remote.index('lm.main')
  assert remote[main + 1:main + 5] == [
      '--config=configs/llama_1b.py', '--workdir=gs://bucket/runs/1b',
      '--config.train.steps=100', "--config.data.path=/data/it's here"]
  assert delete[5] == 'lm-test' and '--quiet' in delete


def test_tpu_vm_deletes_the_tpu_when_training_fails(fakes, tmp_path):
  log = tmp_path / 'gcloud.log'
  r = _run('tpu_vm.sh', *TPU_ARGS, env=_env(fakes, GCLOUD_LOG=str(log), GCLOUD_FAIL='ssh'))
  assert r.returncode != 0
  calls = [shlex.split(line) for line in log.read_text().splitlines()]
  assert [c[3] for c in calls] == ['create', 'scp', 'ssh', 'delete']  # stopped at the install
  assert calls[-1][4] == 'lm-test'


@pytest.mark.parametrize('args,message', [
    (['--zone=z', '--accelerator-type=v4-8', '--workdir=w'], 'missing required flag(s): --name'),
    ([*TPU_ARGS, '--colour=red'], "unknown flag '--colour'"),
    ([*TPU_ARGS, 'stray'], "unexpected argument 'stray'"),
    ([*TPU_ARGS, '--config=configs/nope.py'], 'is not a file of this repository'),
    ([*TPU_ARGS, '--name=Bad_Name'], 'must be lowercase letters'),
])
def test_tpu_vm_bad_arguments_are_usage_errors(fakes, tmp_path, args, message):
  r = _run('tpu_vm.sh', *args, '--dry-run', env=_env(fakes, GCLOUD_LOG=str(tmp_path / 'l')))
  assert r.returncode == 2 and message in r.stderr, r.stderr
  assert '+ gcloud' not in r.stdout


# ---- SLURM ----------------------------------------------------------------------------------

SLURM_ENV = dict(SLURM_JOB_NUM_NODES='2', SLURM_JOB_NODELIST='gpu[03-04]',
                 SLURM_GPUS_ON_NODE='4', SLURM_JOB_ID='7')


def _srun(stdout: str) -> tuple[list[str], str]:
  line = next(line for line in stdout.splitlines() if line.startswith('srun '))
  argv = shlex.split(line)
  return argv, argv[-1]


def test_slurm_dry_run_prints_srun_with_the_distributed_flags(fakes):
  r = _run('slurm.sbatch', '--config=configs/gpt2_124m.py', '--workdir=/shared/w',
           env=_env(fakes, LM_DRY_RUN='1', **SLURM_ENV))
  assert r.returncode == 0, r.stderr
  argv, task = _srun(r.stdout)
  assert '--ntasks=8' in argv and '--ntasks-per-node=4' in argv and '--nodes=2' in argv
  assert argv[-3:-1] == ['bash', '-c']
  assert '-m lm.main --config=configs/gpt2_124m.py --workdir=/shared/w' in task
  assert '--coordinator_address=gpu03:12352' in task  # 12345 + job id 7
  assert '--num_processes=8' in task and '--process_id=$SLURM_PROCID' in task
  assert 'JAX_LOCAL_DEVICE_IDS=' in task and 'CUDA_VISIBLE_DEVICES=' not in task


def test_slurm_process_per_node_and_auto_detection(fakes):
  r = _run('slurm.sbatch', '--config=c.py', env=_env(fakes, LM_DRY_RUN='1', LM_PROCS='node',
                                                      **SLURM_ENV))
  argv, task = _srun(r.stdout)
  assert '--ntasks=2' in argv and '--ntasks-per-node=1' in argv
  assert '--num_processes=2' in task and 'JAX_LOCAL_DEVICE_IDS=0,1,2,3 ' in task
  r = _run('slurm.sbatch', '--config=c.py', env=_env(fakes, LM_DRY_RUN='1', LM_SLURM_AUTO='1',
                                                      **SLURM_ENV))
  _, task = _srun(r.stdout)
  assert '--coordinator_address' not in task and '--process_id' not in task


def test_slurm_tasks_get_distinct_process_ids_and_gpus(fakes):
  r = _run('slurm.sbatch', '--config=configs/default.py', "--config.data.path=a b",
           env=_env(fakes, PYTHON=str(fakes / 'python'), FAKE_MODE='exit', **SLURM_ENV))
  lines = [line for line in r.stdout.splitlines() if line.startswith('id=')]
  assert sorted(int(line.split()[0][3:]) for line in lines) == list(range(8))
  for line in lines:
    rank = int(line.split()[0][3:])
    assert f'gpus=all devs={rank % 4} ' in line  # every GPU visible; jax is told its own
    assert "--config.data.path=a b --coordinator_address=gpu03:12352 --num_processes=8" in line
  assert r.returncode == 7  # the fake exits with its process id; srun reports the worst


def _jax_view(r: subprocess.CompletedProcess) -> list[dict]:
  assert r.returncode == 0, r.stdout + r.stderr
  return [json.loads(line[4:]) for line in r.stdout.splitlines() if line.startswith('JAX ')]


@pytest.mark.parametrize('env', [{}, {'LM_SLURM_AUTO': '1'}, {'FAKE_SRUN_BIND_GPU': '1'}],
                         ids=['flags', 'jax-detects-slurm', 'slurm-binds-gpus'])
def test_slurm_each_process_gets_exactly_its_own_gpu(fakes, env):
  r = _run('slurm.sbatch', '--config=c.py', env=_env(fakes, PYTHON=str(fakes / 'jax_python'),
                                                     **{**SLURM_ENV, 'SLURM_GPUS_ON_NODE': '2'},
                                                     **env))
  procs = _jax_view(r)  # (2 nodes x 2 GPUs: each stand-in imports jax)
  assert sorted(p['process_id'] for p in procs) == list(range(4))
  assert {p['num_processes'] for p in procs} == {4}
  assert len({p['coordinator'] for p in procs}) == 1
  for node in (0, 1):
    gpus = [p['gpus'] for p in procs if p['node'] == node]
    assert sorted(gpus) == [['0'], ['1']], gpus  # one each, all of the node's


def test_slurm_process_per_node_gets_all_its_gpus(fakes):
  r = _run('slurm.sbatch', '--config=c.py', env=_env(fakes, PYTHON=str(fakes / 'jax_python'),
                                                     LM_PROCS='node', **SLURM_ENV))
  procs = _jax_view(r)
  assert [(p['node'], p['process_id'], p['gpus']) for p in procs] == [
      (0, 0, ['0', '1', '2', '3']), (1, 1, ['0', '1', '2', '3'])]


@pytest.mark.parametrize('args,env,message', [
    (['stray'], {'LM_DRY_RUN': '1'}, "unexpected argument 'stray'"),
    (['--process_id=3'], {'LM_DRY_RUN': '1'}, 'is set by this script'),
    ([], {'LM_DRY_RUN': '1', 'LM_PROCS': 'socket'}, "LM_PROCS='socket' must be"),
    ([], {}, 'not inside a SLURM job'),
])
def test_slurm_bad_arguments_are_usage_errors(fakes, args, env, message):
  r = _run('slurm.sbatch', *args, env=_env(fakes, **env))
  assert r.returncode == 2 and message in r.stderr, r.stderr


# ---- local ----------------------------------------------------------------------------------


def test_local_dry_run_prints_one_command_per_process(fakes):
  r = _run('local.sh', '-n', '3', '-d', '2', '--dry-run', '--',
           '--config=configs/default.py', '--workdir=/tmp/w',
           env=_env(fakes, XLA_FLAGS='--xla_force_host_platform_device_count=8 '
                                     '--xla_cpu_enable_fast_math=false'))
  assert r.returncode == 0, r.stderr
  lines = r.stdout.splitlines()
  assert len(lines) == 3
  ports = set()
  for i, line in enumerate(lines):
    prefix, argv = line.split(' ', 1)
    argv = shlex.split(argv)
    assert prefix == f'[p{i}]'
    assert 'JAX_PLATFORMS=cpu' in argv
    # The launcher's device count replaces the caller's; the caller's other flags stay.
    assert ('XLA_FLAGS=--xla_cpu_enable_fast_math=false '
            '--xla_force_host_platform_device_count=2') in argv
    assert argv[argv.index('-m') + 1:argv.index('-m') + 4] == [
        'lm.main', '--config=configs/default.py', '--workdir=/tmp/w']
    assert f'--process_id={i}' in argv and '--num_processes=3' in argv
    address = next(a for a in argv if a.startswith('--coordinator_address='))
    ports.add(address)
  assert len(ports) == 1 and ports.pop().startswith('--coordinator_address=127.0.0.1:')


def test_local_runs_every_process_and_exits_with_the_worst_status(fakes):
  r = _run('local.sh', '-n', '3', '-d', '2', '--', '--config=x',
           env=_env(fakes, PYTHON=str(fakes / 'python'), FAKE_MODE='exit',
                    XLA_FLAGS='--xla_force_host_platform_device_count=8'))
  assert r.returncode == 2  # process i exits with status i
  for i in range(3):
    line = next(line for line in r.stdout.splitlines() if line.startswith(f'[p{i}] id='))
    assert f'id={i} xla=--xla_force_host_platform_device_count=2 platforms=cpu' in line


# The signal tests start the launcher with SIGINT at its default: a test run started in the
# background by a shell without job control (`cmd &` in a script) inherits SIGINT ignored,
# and bash can neither trap nor un-ignore a signal ignored when it started, so the stand-ins
# would never see the launcher's Ctrl-C (two CI runs failed so).
DEFAULT_SIGINT = ('env', '--default-signal=INT')


def test_local_failure_stops_the_other_processes(fakes, tmp_path):
  r = subprocess.run([*DEFAULT_SIGINT, 'bash', str(LAUNCH / 'local.sh'), '-n', '3', '-d', '1',
                      '--', '--config=x'], cwd=REPO, capture_output=True, text=True, timeout=60,
                     check=False, env=_env(fakes, PYTHON=str(fakes / 'python'),
                                           FAKE_MODE='fail', FAKE_READY=str(tmp_path)))
  assert '[p1] failing' in r.stdout
  assert '[p0] interrupted id=0' in r.stdout and '[p2] interrupted id=2' in r.stdout
  assert 'finished' not in r.stdout and r.returncode == 130
  assert 'process 1 exited with status 3' in r.stderr


def test_local_ctrl_c_interrupts_every_process(fakes):
  p = subprocess.Popen([*DEFAULT_SIGINT, 'bash', str(LAUNCH / 'local.sh'), '-n', '2', '-d', '1',
                        '--', '--x'],
                       cwd=REPO, env=_env(fakes, PYTHON=str(fakes / 'python')),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  started, deadline = [], time.monotonic() + 30
  while len(started) < 2 and time.monotonic() < deadline:  # both stand-ins running (~120 s)
    line = p.stdout.readline()
    started += [line] if ' id=' in line else []
  p.send_signal(signal.SIGINT)
  out, _ = p.communicate(timeout=30)
  assert len(started) == 2, out
  assert '[p0] interrupted id=0' in out and '[p1] interrupted id=1' in out, out
  assert 'finished' not in out and p.returncode == 130


@pytest.mark.parametrize('args,message', [
    (['-n', '0', '-d', '1'], "-n must be a positive integer, got '0'"),
    (['-n', '2'], '-d M (fake CPU devices per process) is required'),
    (['-n', '2', '-d', '1', '--config=x'], "unknown argument '--config=x'"),
    (['-n', '2', '-d'], '-d needs a value'),
    (['-n', '2', '-d', 'four'], "-d must be a positive integer, got 'four'"),
])
def test_local_bad_arguments_are_usage_errors(fakes, args, message):
  r = _run('local.sh', '--dry-run', *args, env=_env(fakes))
  assert r.returncode == 2 and message in r.stderr, r.stderr
