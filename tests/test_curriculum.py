"""Tests of the level controller, the environment sampler and their resume."""

import json

import numpy as np
import pytest

from rlvr_jax.envs import curriculum


def _controller(**kwargs):
  return curriculum.LevelController(
      **{"num_levels": 3, "window": 4, "up_threshold": 0.9,
         "down_threshold": 0.2, **kwargs})


def test_controller_up_hold_down_by_hand():
  c = _controller()
  assert c.record(0, [1, 1, 1]) == 0      # 3 < window=4 outcomes: no decision
  assert c.accuracy() == 1.0             # 3/3, below the window size
  assert c.record(0, [1, 1, 1]) == 1      # 4th: 4/4 = 1.0 > 0.9 -> up;
  assert c.state_dict() == {"level": 1, "outcomes": []}  # the rest is stale
  assert c.record(0, [0, 0, 0, 0]) == 1   # stale level: ignored
  assert c.record(1, [1, 1, 1, 0]) == 1   # 3/4 = 0.75: hold
  assert c.record(1, [1]) == 1            # [1, 1, 0, 1] = 0.75: hold
  assert c.record(1, [0, 0]) == 1         # [1,0,1,0]=0.5, [0,1,0,0]=0.25: hold
  assert c.record(1, [0]) == 1            # [1, 0, 0, 0] = 0.25 > 0.2: hold
  assert c.record(1, [0]) == 0            # [0, 0, 0, 0] = 0 < 0.2: down
  assert c.state_dict() == {"level": 0, "outcomes": []}
  assert c.record(0, [0, 0, 0, 0]) == 0   # 0 < 0.2 but level 0 is the floor
  assert c.state_dict() == {"level": 0, "outcomes": [0.0] * 4}


def test_controller_threshold_boundaries():
  c = _controller(window=10, num_levels=2)
  assert c.record(0, [1] * 9 + [0]) == 0  # 9/10 = 0.9: not above 0.9, hold
  assert c.record(0, [1]) == 0            # window [1]*8 + [0, 1]: 0.9, hold
  assert c.record(0, [1]) == 0            # [1]*7 + [0, 1, 1]: 0.9, hold
  # After 8 more ones the 0 has left the window: 10/10 = 1.0 > 0.9 -> up.
  assert c.record(0, [1] * 8) == 1
  assert c.record(1, [1] * 10) == 1       # top level: stays, window rolls
  assert len(c.state_dict()["outcomes"]) == 10
  d = _controller(window=5)
  d.record(0, [1, 1, 1, 1, 1])            # up to level 1
  assert d.record(1, [1, 0, 0, 0, 0]) == 1  # 1/5 = 0.2: not below 0.2, hold
  assert d.record(1, [0]) == 0            # [0, 0, 0, 0, 0] = 0: down


def _reference_levels(outcomes, levels_played, *, num_levels, window, up,
                      down):
  """An independent list-based controller: the level after each report."""
  level, buf, trace = 0, [], []
  for played, value in zip(levels_played, outcomes):
    if played == level:
      buf = (buf + [value])[-window:]
      if len(buf) == window:
        acc = sum(buf) / window
        new = min(level + 1, num_levels - 1) if acc > up else (
            max(level - 1, 0) if acc < down else level)
        if new != level:
          level, buf = new, []
    trace.append(level)
  return trace


def _play(controller, rng, steps, probs):
  """Feeds one outcome per step at the controller's level; the levels."""
  trace = []
  for _ in range(steps):
    level = controller.level
    controller.record(level, [float(rng.random() < probs[level])])
    trace.append(controller.level)
  return trace


def test_controller_matches_reference_and_resumes_exactly():
  probs = [0.97, 0.6, 0.1, 0.5]  # success probability per level
  kwargs = {"num_levels": 4, "window": 8, "up_threshold": 0.9,
            "down_threshold": 0.2}
  rng = np.random.default_rng(0)
  c = curriculum.LevelController(**kwargs)
  played, outcomes, trace = [], [], []
  for step in range(400):
    # Every 7th report is for a stale level (episodes sampled before a change).
    played.append(c.level if step % 7 else (c.level + 1) % 4)
    outcomes.append(float(rng.random() < probs[c.level]))
    trace.append(c.record(played[-1], outcomes[-1:]))
  ref = _reference_levels(outcomes, played, num_levels=4, window=8, up=0.9,
                          down=0.2)
  assert trace == ref and len(set(ref)) >= 3
  # Resume mid-window: save, reload into a fresh controller, continue both.
  c = curriculum.LevelController(**kwargs)
  _play(c, np.random.default_rng(1), 13, probs)
  state = json.loads(json.dumps(c.state_dict()))
  assert 0 < len(state["outcomes"]) < 8
  resumed = curriculum.LevelController(**kwargs)
  resumed.load_state_dict(state)
  fresh = curriculum.LevelController(**kwargs)
  future = [_play(x, np.random.default_rng(2), 300, probs)
            for x in (c, resumed, fresh)]
  assert future[0] == future[1]
  assert future[2] != future[0]  # the test can tell a lost state
  assert c.state_dict() == resumed.state_dict()


def test_controller_errors_name_the_flag():
  with pytest.raises(ValueError, match="--config.curriculum.window"):
    _controller(window=0)
  with pytest.raises(ValueError, match="down_threshold and up_threshold"):
    _controller(up_threshold=0.2, down_threshold=0.2)
  with pytest.raises(ValueError, match="start_level"):
    _controller(start_level=3)
  with pytest.raises(ValueError, match="outcomes must be in"):
    _controller().record(0, [1.5])
  with pytest.raises(ValueError, match="outside"):
    _controller().load_state_dict({"level": 3, "outcomes": []})
  with pytest.raises(ValueError, match="window is 4"):
    _controller().load_state_dict({"level": 0, "outcomes": [1] * 5})


def test_signal_weights_by_hand():
  # E = 3, floor 0.1: s = [1, 0.5, 0], sum 1.5, shares [2/3, 1/3, 0];
  # p = 0.1 + 0.7 * share = [17/30, 10/30, 3/30].
  np.testing.assert_allclose(
      curriculum.signal_weights([1.0, 0.5, 0.0], floor=0.1),
      [17 / 30, 10 / 30, 3 / 30], rtol=1e-12)
  # No signal anywhere: uniform.
  np.testing.assert_allclose(
      curriculum.signal_weights([0.0, 0.0], floor=0.2), [0.5, 0.5])
  with pytest.raises(ValueError, match="signal_floor must be in"):
    curriculum.signal_weights([1.0, 1.0, 1.0], floor=0.34)
  with pytest.raises(ValueError, match="signal must be"):
    curriculum.signal_weights([1.2], floor=0.0)


def test_env_sampler_weights_by_hand():
  s = curriculum.EnvSampler(["a", "b", "c", "d"], window=2, floor=0.1)
  assert s.record("a", [1, 0, 1, 1]) is True
  assert s.record("a", [1, 1, 1, 1]) is False
  assert s.record("b", [[0, 0], [0, 0]]) is False
  assert s.record("d", [[1, 0], [1, 1], [0, 0]]) is False  # window 2 keeps
  # a: [T, F] -> 0.5; b: [F, F] -> 0; c: no groups -> 1; d: [F, F] -> 0.
  # sum 1.5; p = 0.1 + 0.6 * share = [0.1 + 0.2, 0.1, 0.1 + 0.4, 0.1].
  w = s.weights()
  assert list(w) == ["a", "b", "c", "d"]
  np.testing.assert_allclose(list(w.values()), [0.3, 0.1, 0.5, 0.1],
                             rtol=1e-12)
  draws = s.sample(20_000)
  freq = [draws.count(n) / len(draws) for n in "abcd"]
  np.testing.assert_allclose(freq, [0.3, 0.1, 0.5, 0.1], atol=0.015)
  with pytest.raises(ValueError, match="unknown environment 'e'"):
    s.record("e", [1, 0])
  with pytest.raises(ValueError, match="must be \\[G\\] or \\[Q, G\\]"):
    s.record("a", np.zeros([2, 2, 2]))
  with pytest.raises(ValueError, match="signal_window"):
    curriculum.EnvSampler(["a"], window=0, floor=0.0)


def test_curriculum_state_round_trip_resumes_exactly():

  def build():
    return curriculum.Curriculum(
        {"ecom": curriculum.LevelController(num_levels=7, window=4),
         "basic_arithmetic": curriculum.LevelController(num_levels=8,
                                                        window=4)},
        curriculum.EnvSampler(["ecom", "basic_arithmetic"], window=8,
                              floor=0.2, seed=5))

  def run(cur, rng, steps):
    out = []
    for _ in range(steps):
      name = cur.sampler.sample(1)[0]
      level = cur.controllers[name].level
      p = 0.95 if name == "ecom" else 0.5
      group = (rng.random([2, 4]) < p).astype(np.float32)
      cur.record(name, level, group, group)
      out.append((name, cur.controllers[name].level,
                  json.dumps(cur.metrics(), sort_keys=True)))
    return out

  a = build()
  run(a, np.random.default_rng(0), 5)
  state = json.loads(json.dumps(a.state_dict()))
  b = build()
  b.load_state_dict(state)
  assert b.state_dict() == a.state_dict()
  continued = run(a, np.random.default_rng(1), 30)
  assert run(b, np.random.default_rng(1), 30) == continued
  assert run(build(), np.random.default_rng(1), 30) != continued
  metrics = a.metrics()
  assert set(metrics) == {f"curriculum/{n}/{k}" for n in
                          ("ecom", "basic_arithmetic")
                          for k in ("level", "accuracy", "weight")}
  assert metrics["curriculum/ecom/level"] >= 1.0
  with pytest.raises(ValueError, match="differ"):
    b.load_state_dict({"controllers": {"x": {}}, "sampler": state["sampler"]})
