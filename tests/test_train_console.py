"""The training binary's console: progress, own log lines and warnings (issue 20, item 7).

A 3-step tiny run printed 358 console lines, 255 of them orbax INFO lines and
about 100 the config dump. The console now shows this project's INFO lines and
every warning; libraries' INFO lines go to `<workdir>/train.log` only.
"""

import logging
import os
import re
import subprocess
import sys

import pytest

from experiments import train

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_MAX_CONSOLE_LINES = 30

# One step of the tiny config, as cheap as it gets: no evaluations, no checker
# workers, short plain prompts; one checkpoint (orbax logs its INFO lines).
_FLAGS = (
    "--config=experiments/configs/tiny.py",
    "--config.rl.steps=1",
    "--config.data.template=plain",
    "--config.data.few_shot=0",
    "--config.rl.max_prompt_len=64",
    "--config.reward.checker=exact",
    "--config.data.eval_size=2",
    "--config.train.eval_before=False",
    "--config.train.eval_after=False",
    "--config.train.tensorboard=False",
    "--config.train.dense_window=0",
    "--config.train.save_every=1",
    f"--compilation_cache={os.path.join(_ROOT, '.cache', 'jax')}",
)

# absl's line prefix: I1206 17:48:07.408975 139764861143936 loop.py:185] ...
_ABSL_INFO = re.compile(r"^I\d{4} [\d:.]+ +\d+ ([^:\s]+):\d+\]", re.MULTILINE)


def _own_files() -> set[str]:
  """Base names of this project's Python files (absl prints only the base name)."""
  names = set()
  for top in ("rlvr_jax", "experiments"):
    for _, _, files in os.walk(os.path.join(_ROOT, top)):
      names.update(f for f in files if f.endswith(".py"))
  return names


@pytest.fixture(scope="module")
def one_step(tmp_path_factory) -> tuple[str, str]:
  """(console: stdout + stderr, train.log) of a 1-step tiny run."""
  workdir = str(tmp_path_factory.mktemp("console") / "run")
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  result = subprocess.run([sys.executable, "-m", "experiments.train", *_FLAGS,
                           f"--workdir={workdir}"], cwd=_ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stdout[-4000:]
  with open(os.path.join(workdir, "train.log")) as f:
    return result.stdout, f.read()


def test_console_has_no_library_info_lines(one_step):
  console, _ = one_step
  libraries = set(_ABSL_INFO.findall(console)) - _own_files()
  assert not libraries, f"library INFO lines on the console: {sorted(libraries)}\n{console}"


def test_console_is_short_and_names_the_config_and_log_files(one_step):
  console, _ = one_step
  lines = console.splitlines()
  assert len(lines) <= _MAX_CONSOLE_LINES, f"{len(lines)} console lines:\n{console}"
  assert re.search(r"config: \S+/config\.json; full log: \S+/train\.log", console), console
  assert not re.search(r"^algo:$", console, re.MULTILINE), "the config is dumped:\n" + console


def test_train_log_holds_the_library_lines(one_step):
  _, log = one_step
  libraries = set(_ABSL_INFO.findall(log)) - _own_files()
  assert any("checkpoint" in name for name in libraries), sorted(libraries)
  assert "config: " in log  # and this project's own lines


def _record(pathname: str, level: int = logging.INFO) -> logging.LogRecord:
  return logging.LogRecord("absl", level, pathname, 1, "message", None, None)


def test_console_filter_compares_folders_not_names():
  # A checkout named rlvr_jax with its venv inside (the TPU workers' layout):
  # the orbax file's path contains "/rlvr_jax/" but is not this project's code.
  home = os.path.join(os.sep, "home", "u", "rlvr_jax")
  console = train.ConsoleFilter((os.path.join(home, "rlvr_jax"),
                                 os.path.join(home, "experiments")))
  orbax = os.path.join(home, ".venv", "lib", "python3.11", "site-packages", "orbax",
                       "checkpoint", "checkpoint_manager.py")
  assert not console.filter(_record(orbax))
  assert console.filter(_record(orbax, logging.WARNING))
  assert console.filter(_record(os.path.join(home, "rlvr_jax", "training", "loop.py")))
  assert console.filter(_record(os.path.join(home, "experiments", "train.py")))
  assert not console.filter(_record(os.path.join(home, "experiments_old", "train.py")))
