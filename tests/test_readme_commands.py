"""Every `python -m experiments.*` command of README.md and the config docstrings starts.

`experiments.train` commands run the binary's `main` with `--validate_only`:
the flags, data, tokenizer and prompt/context-length checks of a real start,
without loading the model's weights. The other binaries' command lines are
parsed by their own absl flags (an unknown or misspelled flag fails), and the
study's `check_arguments`.

All commands run in one subprocess (this file run as a program, `_drive`):
it imports the binaries' dependencies once, then forks a child per command,
so each command parses its flags into a fresh absl/config_flags state, as a
process of its own would, without paying JAX's import again.
"""

import ast
import functools
import glob
import importlib
import importlib.util
import json
import multiprocessing
import os
import re
import shlex
import subprocess
import sys
from typing import Any

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TRAIN = "experiments.train"
_TRAIN_DEFAULT_CONFIG = os.path.join("experiments", "configs", "default.py")
_COMMAND_TIMEOUT_S = 120

# Commands that must fail, each with a fragment of its error: the check of the
# checks (a test that a broken README command would fail, naming it).
_BROKEN = {
    "python -m experiments.train --config.rl.no_such_field=1": "no_such_field",
    # Curriculum prompts are longer than the default max_prompt_len (issue 20, 3).
    "python -m experiments.train --config.algo.advantage=scrl": "--config.rl.max_prompt_len",
    "python -m experiments.relex --run_dir=r --no_such_flag=1": "no_such_flag",
    "python -m experiments.study --config.study.methods=grpo,nope": "--config.study.methods",
}


def _commands(text: str) -> list[str]:
  """`python -m experiments.*` command lines (with `\\` continuations), comments cut."""
  text = text.replace("\\\n", " ")
  found = []
  for line in text.splitlines():
    match = re.search(r"python -m experiments\.\S+.*", line)
    if match:
      command = match.group(0).split("  #")[0].split("`")[0].strip()
      found.append(" ".join(command.split()))
  return found


def _all_commands() -> list[tuple[str, str]]:
  files = [os.path.join(_ROOT, "README.md")]
  files += sorted(glob.glob(os.path.join(_ROOT, "experiments", "configs", "*.py")))
  files += [os.path.join(_ROOT, "experiments", "train.py")]
  out = []
  for path in files:
    with open(path) as f:
      for command in _commands(f.read()):
        out.append((os.path.relpath(path, _ROOT), command))
  return sorted(set(out))


def _module_and_args(command: str) -> tuple[str, list[str]]:
  """The binary and the arguments a command is checked with (train: --validate_only)."""
  argv = shlex.split(command)
  module, args = argv[2], argv[3:]
  if module == _TRAIN:
    args = [a for a in args if not a.startswith("--workdir")] + ["--validate_only"]
  return module, args


# --- The driver: runs in one subprocess, forks a child per command. ---


def _check_in_child(module: str, args: list[str], workdir: str, log: str) -> None:
  """One command's start-up checks; runs in a forked child, its output to `log`."""
  fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
  os.dup2(fd, 1)
  os.dup2(fd, 2)
  from absl import flags  # pylint: disable=g-import-not-at-top
  # Before the import: config_flags reads sys.argv when the flag is defined.
  sys.argv = [module, *args] + ([f"--workdir={workdir}"] if module == _TRAIN else [])
  binary = importlib.import_module(module)
  getattr(binary, "define_flags", lambda: None)()
  argv = flags.FLAGS(sys.argv)
  if module == _TRAIN:
    binary.main(argv)
  elif module == "experiments.study":
    from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
    binary.check_arguments(binary.regime_from_flags(
        flags.FLAGS.config, config_flags.get_override_values(flags.FLAGS["config"])))


def _warm_imports(modules: set[str]) -> None:
  """Imports what the binaries import (not the binaries: their flags would clash)."""
  for module in sorted(modules):
    spec = importlib.util.find_spec(module)
    with open(spec.origin) as f:
      tree = ast.parse(f.read())
    for node in tree.body:
      names = []
      if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
      for name in names:
        if name.startswith(("experiments", "__future__")):
          continue
        try:
          importlib.import_module(name)
        except ImportError:
          pass  # `from m import function`; a real failure shows in the child


def _warm_model_configs(commands: list[tuple[str, list[str]]]) -> None:
  """Reads each train config's model (seconds for a GGUF's metadata) once for all children.

  `config_checks.model_config_and_tokenizer_path` is a pure function of
  `model.source`; caching it changes no check, only how often the file is read.
  """
  from rlvr_jax.training import config_checks  # pylint: disable=g-import-not-at-top
  read = getattr(config_checks, "model_config_and_tokenizer_path", None)
  if read is None:
    return  # renamed: every child reads its model itself (slower, same checks)
  config_checks.model_config_and_tokenizer_path = read = functools.lru_cache(read)
  sources = set()
  for module, args in commands:
    if module != _TRAIN:
      continue
    flag = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
    try:
      spec = importlib.util.spec_from_file_location(
          "warm_config", flag.get("config", _TRAIN_DEFAULT_CONFIG).split(":")[0])
      config_file = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(config_file)
      sources.add(flag.get("config.model.source", config_file.get_config().model.source))
    except Exception:  # pylint: disable=broad-except
      continue  # the child reports it
  for source in sorted(sources):
    try:
      read(source)
    except ValueError:
      pass  # not cached; the child reports it


def _drive(commands_json: str, results_json: str, workdir: str) -> None:
  """Checks every command of `commands_json`; writes {command: error or ''}."""
  with open(commands_json) as f:
    commands = json.load(f)
  parsed = {command: _module_and_args(command) for command in commands}
  _warm_imports({module for module, _ in parsed.values()})
  _warm_model_configs(list(parsed.values()))
  fork = multiprocessing.get_context("fork")
  results = {}
  for i, command in enumerate(commands):
    module, args = parsed[command]
    log = os.path.join(workdir, f"{i}.log")
    child = fork.Process(target=_check_in_child,
                         args=(module, args, os.path.join(workdir, str(i)), log))
    child.start()
    child.join(_COMMAND_TIMEOUT_S)
    if child.is_alive():
      child.kill()
      child.join()
    with open(log, errors="replace") as f:
      output = f.read()
    if child.exitcode != 0:
      reason = "timed out" if child.exitcode == -9 else f"exit code {child.exitcode}"
      results[command] = f"{reason}\n{output[-3000:]}"
    else:
      results[command] = ""
  with open(results_json, "w") as f:
    json.dump(results, f)


# --- The tests. ---


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, Any]:
  """{command: error ('' when it starts)} of every README command and of `_BROKEN`."""
  tmp = tmp_path_factory.mktemp("readme_commands")
  commands = sorted({c for _, c in _all_commands()} | set(_BROKEN))
  with open(tmp / "commands.json", "w") as f:
    json.dump(commands, f)
  run = subprocess.run([sys.executable, __file__, str(tmp / "commands.json"),
                        str(tmp / "results.json"), str(tmp)],
                       cwd=_ROOT, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-5000:]
  with open(tmp / "results.json") as f:
    return json.load(f)


def test_the_commands_are_found():
  commands = [c for _, c in _all_commands()]
  assert any("--config.algo.advantage=scrl" in c for c in commands)
  assert any(c.startswith("python -m experiments.relex") for c in commands)
  assert sum(c.startswith("python -m experiments.train") for c in commands) >= 5


@pytest.mark.parametrize("where,command", _all_commands())
def test_command_starts(where, command, results):
  assert not results[command], f"{where}: {command}\n{results[command]}"


@pytest.mark.parametrize("command", sorted(_BROKEN))
def test_a_broken_command_fails(command, results):
  assert results[command], f"{command} passed its start-up checks"
  assert _BROKEN[command] in results[command], results[command]


if __name__ == "__main__":
  sys.path.insert(0, _ROOT)
  _drive(*sys.argv[1:])
