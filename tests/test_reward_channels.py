"""Tests for rlvr_jax.rewards.channels (METHODS.md 6.1)."""

import textwrap

import numpy as np
import pytest

from rlvr_jax.algorithms import advantages
from rlvr_jax.rewards import channels
from rlvr_jax.rewards import scorers

_USER_MODULE = textwrap.dedent("""
    def score(examples, texts):
      return [float(len(t)) for t in texts]

    def named(examples, texts):
      return {"length": [len(t) for t in texts],
              "has_answer": [float(e["answer"] in t)
                             for e, t in zip(examples, texts)]}

    def short(examples, texts):
      return [1.0] * (len(texts) - 1)

    def nan(examples, texts):
      return [1.0, float("nan")]

    def text(examples, texts):
      return [1.0, "2"]

    def flags(examples, texts):
      return [True, False]

    def nothing(examples, texts):
      return None

    def bad_channel(examples, texts):
      return {"ok": [1, 2], "bad": [1]}

    def bad_key(examples, texts):
      return {3: [1, 2]}

    class Scorer:
      @staticmethod
      def score(examples, texts):
        return [0, 1]

    not_callable = 3
""")

_EXAMPLES = [{"problem": "1+1?", "answer": "2"}, {"problem": "2+2?",
                                                  "answer": "4"}]
_TEXTS = ["it is 2", "5"]


@pytest.fixture(name="user_module")
def _user_module(tmp_path, monkeypatch):
  (tmp_path / "h6_user_rewards.py").write_text(_USER_MODULE)
  monkeypatch.syspath_prepend(str(tmp_path))
  return "h6_user_rewards"


def test_scalar_is_the_weighted_sum_and_metrics():
  # Rows: correct, format, overlong with weights (1, 0.5, 1):
  #   row 0: 1 + 0.5 * 1 + 0    = 1.5
  #   row 1: 0 + 0.5 * 1 - 0.25 = 0.25
  #   row 2: 0 + 0 - 1          = -1
  out = channels.RewardChannels(
      names=("correct", "format", "overlong"),
      values=np.array([[1, 1, 0], [0, 1, -0.25], [0, 0, -1]], np.float32),
      weights=np.array([1.0, 0.5, 1.0], np.float32),
      reasons=[None, "wrong: 3 != 4", "timeout: 10s"])
  np.testing.assert_allclose(out.scalar(), [1.5, 0.25, -1.0])
  np.testing.assert_array_equal(out.channel("format"), [1, 1, 0])
  metrics = out.metrics()
  assert metrics["reward/count"] == 3
  assert metrics["reward/total_sum"] == pytest.approx(0.75)
  assert metrics["reward/overlong_sum"] == pytest.approx(-1.25)
  assert metrics["reward/reason/wrong"] == 1
  assert metrics["reward/reason/timeout"] == 1
  assert metrics["reward/reason/crash"] == 0


def test_from_reward_output_matches_the_builtin_scalar_and_keys():
  output = scorers.RewardOutput(
      rewards=np.array([1.5, -0.75], np.float32),
      correct=np.array([1.0, 0.0], np.float32),
      format=np.array([1.0, 0.0], np.float32),
      overlong=np.array([0.0, -0.75], np.float32),
      reasons=[None, "no_answer: no \\boxed{} answer"])
  got = channels.from_reward_output(output, format_weight=0.5)
  np.testing.assert_allclose(got.scalar(), output.rewards)
  assert got.metrics() == output.metrics()


def test_channels_check_their_shapes():
  with pytest.raises(ValueError, match="distinct"):
    channels.RewardChannels(("a", "a"), np.zeros((1, 2)), np.ones(2), [None])
  with pytest.raises(ValueError, match="weights"):
    channels.RewardChannels(("a",), np.zeros((1, 1)), np.ones(2), [None])
  with pytest.raises(ValueError, match="reasons"):
    channels.RewardChannels(("a",), np.zeros((1, 1)), np.ones(1), [])


def test_user_function_by_import_path(user_module):
  fn = channels.load_reward_fn(f"{user_module}:score")
  got = channels.call_reward_fn(fn, _EXAMPLES, _TEXTS)
  assert got.names == ("reward",)
  np.testing.assert_array_equal(got.scalar(), [7.0, 1.0])
  fn = channels.load_reward_fn(f"{user_module}:Scorer.score")
  got = channels.call_reward_fn(fn, _EXAMPLES, _TEXTS)
  assert got.reasons[0].startswith("wrong: h6_user_rewards:")
  assert got.reasons[1] is None


def test_user_function_with_named_channels(user_module):
  fn = channels.load_reward_fn(f"{user_module}:named")
  got = channels.call_reward_fn(fn, _EXAMPLES, _TEXTS,
                                weights={"has_answer": 10.0})
  assert got.names == ("length", "has_answer")
  np.testing.assert_array_equal(got.values, [[7, 1], [1, 0]])
  # 7 * 1 + 1 * 10 = 17; 1 * 1 + 0 * 10 = 1.
  np.testing.assert_allclose(got.scalar(), [17.0, 1.0])
  with pytest.raises(ValueError, match="did not return"):
    channels.call_reward_fn(fn, _EXAMPLES, _TEXTS, weights={"format": 1.0})


@pytest.mark.parametrize("attribute,message", [
    ("short", "h6_user_rewards:short has 1 values for 2 rows"),
    ("nan", "h6_user_rewards:nan, row 1: nan is not finite"),
    ("text", "h6_user_rewards:text, row 1: '2' .str. is not a number"),
    ("flags", "h6_user_rewards:flags, row 0: True .bool. is not a number"),
    ("nothing", "h6_user_rewards:nothing must be a list of 2 numbers, got "
                "NoneType"),
    ("bad_channel", "channel 'bad' has 1 values for 2 rows"),
    ("bad_key", "key 3"),
])
def test_bad_return_values_name_the_function_and_row(user_module, attribute,
                                                     message):
  fn = channels.load_reward_fn(f"{user_module}:{attribute}")
  with pytest.raises(ValueError, match=message):
    channels.call_reward_fn(fn, _EXAMPLES, _TEXTS)


@pytest.mark.parametrize("spec,message", [
    ("h6_user_rewards.score", "package.module:function"),
    ("h6_no_such_module:score", "cannot import"),
    ("h6_user_rewards:missing", "no attribute 'missing'"),
    ("h6_user_rewards:not_callable", "not callable"),
])
def test_bad_specs_name_the_flag(user_module, spec, message):
  del user_module  # Only puts the module on the path.
  with pytest.raises(ValueError, match="--config.reward.fn") as info:
    channels.load_reward_fn(spec)
  assert message in str(info.value)


def _np_gdpo(values, weights, G):
  """METHODS.md 6.2 in NumPy: per-channel group z-score (ddof=1, 0 for a
  constant channel), weighted sum, whitening over the batch."""
  B, C = values.shape
  a = np.zeros(B)
  for c in range(C):
    for n in range(B // G):
      r = values[n * G:(n + 1) * G, c].astype(np.float64)
      if np.all(r == r[0]):
        continue
      a[n * G:(n + 1) * G] += weights[c] * (r - r.mean()) / (
          r.std(ddof=1) + 1e-6)
  return (a - a.mean()) / (a.std(ddof=1) + 1e-6)


def test_channels_feed_gdpo_per_channel():
  # Two groups of 3; the format channel is constant in group 1, so it adds
  # nothing there.
  rng = np.random.default_rng(0)
  values = np.stack([rng.integers(0, 2, 6), [1, 1, 1, 0, 1, 1],
                     rng.uniform(-1, 0, 6)], axis=1).astype(np.float32)
  out = channels.RewardChannels(("correct", "format", "overlong"), values,
                                np.array([1.0, 0.5, 1.0], np.float32),
                                [None] * 6)
  got = advantages.gdpo(out.values, group_size=3, weights=out.weights)
  np.testing.assert_allclose(got, _np_gdpo(values, out.weights, 3),
                             rtol=1e-5, atol=1e-6)
