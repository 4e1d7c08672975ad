"""Every `python -m experiments.*` command of README.md and the config docstrings starts.

`experiments.train` commands run with `--validate_only`: the flags, data,
tokenizer and prompt/context-length checks of a real start, without loading
the model's weights. The other binaries' command lines are parsed by their
own absl flags (an unknown or misspelled flag fails), and the study's
`check_arguments`.
"""

import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def test_the_commands_are_found():
  commands = [c for _, c in _all_commands()]
  assert any("--config.algo.advantage=scrl" in c for c in commands)
  assert any(c.startswith("python -m experiments.relex") for c in commands)
  assert sum(c.startswith("python -m experiments.train") for c in commands) >= 5


@pytest.mark.parametrize("where,command", _all_commands())
def test_command_starts(where, command, tmp_path):
  argv = shlex.split(command)
  module, args = argv[2], argv[3:]
  if module == "experiments.train":
    args = [a for a in args if not a.startswith("--workdir")]
    run = [sys.executable, "-m", module, *args, f"--workdir={tmp_path}", "--validate_only"]
  else:
    parse = ("import importlib, sys; from absl import flags; "
             f"m = importlib.import_module({module!r}); "
             "getattr(m, 'define_flags', lambda: None)(); flags.FLAGS(sys.argv); "
             "check = getattr(m, 'check_arguments', None); "
             "check and check(flags.FLAGS.config, flags.FLAGS.methods)")
    run = [sys.executable, "-c", parse, *args]
  result = subprocess.run(run, cwd=_ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, f"{where}: {command}\n{result.stderr[-3000:]}"
