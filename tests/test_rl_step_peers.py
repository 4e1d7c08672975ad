"""The peer plumbing of benchmarks/rl_step.py that runs without the peers installed."""

import json
import types

import numpy as np
import pytest

from benchmarks import _tunix_peer
from benchmarks import rl_step


def test_summary_default_keys_and_ratios():
  ours, trl, tunix = {"iteration_s": 10.0}, {"iteration_s": 25.0}, {"iteration_s": 16.0}
  # The default run (ours vs TRL) keeps its three keys: 25 / 10 = 2.5.
  assert rl_step.summary(ours, trl) == {"ours_s": 10.0, "trl_s": 25.0, "speedup": 2.5}
  # tunix adds its time and 16 / 10 = 1.6.
  assert rl_step.summary(ours, None, tunix) == {"ours_s": 10.0, "tunix_s": 16.0,
                                                "speedup_vs_tunix": 1.6}
  assert rl_step.summary(ours, trl, tunix) == {"ours_s": 10.0, "trl_s": 25.0, "speedup": 2.5,
                                               "tunix_s": 16.0, "speedup_vs_tunix": 1.6}


def test_missing_tunix_python_names_the_setup_target(tmp_path):
  missing = str(tmp_path / "bin" / "python")
  with pytest.raises(SystemExit, match=r"--tunix_python=.*make setup-tunix"):
    rl_step._check_tunix_python(missing)


def test_max_abs_diff():
  # |1 - 1.5| = 0.5, |-2 - 1| = 3: the max is 3.
  assert _tunix_peer.max_abs_diff(np.array([[1.0, -2.0]]), np.array([[1.5, 1.0]])) == 3.0
  with pytest.raises(ValueError, match=r"a has shape \(2,\) but b has shape \(1, 2\)"):
    _tunix_peer.max_abs_diff(np.zeros(2), np.zeros((1, 2)))


def test_param_delta_norm():
  before = [np.array([1.0, 2.0], np.float32), np.array([[3.0]], np.float32)]
  after = [np.array([1.0, 5.0], np.float32), np.array([[7.0]], np.float32)]
  # Changes 0, 3 and 4: sqrt(0 + 9 + 16) = 5.
  assert _tunix_peer.param_delta_norm(before, after) == 5.0
  assert _tunix_peer.param_delta_norm(before, before) == 0.0
  with pytest.raises(ValueError, match="before has 2 arrays but after has 1"):
    _tunix_peer.param_delta_norm(before, after[:1])
  with pytest.raises(ValueError, match="array 1"):
    _tunix_peer.param_delta_norm(before, [after[0], np.zeros(1)])


def test_patch_rope_theta_binds_the_config_theta_once():
  def apply_rope(inputs, positions, head_dim, rope_theta=1_000_000):
    del inputs, positions, head_dim
    return rope_theta

  module = types.SimpleNamespace(apply_rope=apply_rope)
  # tunix's attention calls apply_rope(x, positions, head_dim=...) without a theta.
  assert module.apply_rope(None, None, head_dim=64) == 1_000_000
  _tunix_peer._patch_rope_theta(module, 100_000.0)
  assert module.apply_rope(None, None, head_dim=64) == 100_000.0
  # Patching again replaces the theta instead of wrapping the partial.
  _tunix_peer._patch_rope_theta(module, 500_000.0)
  assert module.apply_rope(None, None, head_dim=64) == 500_000.0
  assert module.apply_rope.func is apply_rope


def test_mixed_groups():
  # G = 2: groups (1, 1) equal, (0, 1) mixed, (0, 0) equal -> 1 mixed group.
  assert _tunix_peer.mixed_groups(np.array([1.0, 1.0, 0.0, 1.0, 0.0, 0.0]), group=2) == 1
  # G = 3: (1, 0, 0) and (0, 0, 1) both mixed.
  assert _tunix_peer.mixed_groups(np.array([1.0, 0.0, 0.0, 0.0, 0.0, 1.0]), group=3) == 2
  with pytest.raises(ValueError, match="group=4"):
    _tunix_peer.mixed_groups(np.zeros(6), group=4)


def test_main_all_peers_prints_one_table_and_json(monkeypatch, capsys):
  rows = {"ours": {"framework": "rlvr_jax", "iteration_s": 10.0, "first_iteration_s": 30.0,
                   "generation_s": 4.0, "update_compiles": 2, "update_compile_s": 21.5},
          "trl": {"framework": "trl", "iteration_s": 25.0, "first_iteration_s": 26.0},
          "export": {"framework": "export"},
          "tunix": {"framework": "tunix", "iteration_s": 16.0, "first_iteration_s": 40.0,
                    "generation_s": 5.0, "logits_max_abs_diff": 1.1e-4,
                    "logits_max_abs_diff_unpatched": 6.6, "param_delta_norm": 0.02,
                    "param_norm": 2120.3, "mixed_reward_groups": 3}}
  calls = []

  def fake_subprocess(args, python=rl_step.sys.executable):
    worker = args[0].removeprefix("--worker=")
    calls.append((worker, python))
    return rows[worker]

  monkeypatch.setattr(rl_step, "_subprocess", fake_subprocess)
  monkeypatch.setattr(rl_step.sys, "argv", ["rl_step", "--peer=all", "--iterations=2",
                                            f"--tunix_python={rl_step.sys.executable}"])
  rl_step.main()
  lines = capsys.readouterr().out.strip().splitlines()
  # The export runs under our venv, the tunix worker under --tunix_python.
  assert [w for w, _ in calls] == ["ours", "trl", "export", "tunix"]
  assert all(p == rl_step.sys.executable for _, p in calls)
  assert [line.split()[0] for line in lines[1:4]] == ["rlvr_jax", "trl", "tunix"]
  assert "compiled 2 packed sizes in 21.5 s" in lines[4]
  assert "6.60 without" in lines[5] and "exact-answer rewards in the timed steps: 3" in lines[5]
  assert json.loads(lines[-1]) == {"ours_s": 10.0, "trl_s": 25.0, "speedup": 2.5,
                                   "tunix_s": 16.0, "speedup_vs_tunix": 1.6}


def test_digit_share_by_hand():
  assert _tunix_peer.digit_share("a1b2") == 0.5  # 2 digits of 4 characters
  assert _tunix_peer.digit_share("12 + 3 = 15") == 5 / 11  # 1, 2, 3, 1, 5 of 11
  assert _tunix_peer.digit_share("") == 0.0
