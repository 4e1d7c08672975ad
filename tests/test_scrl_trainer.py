"""SCRL in the trainer (METHODS.md 3): ScrlCredit by hand, then the tiny run."""

import json
import os

import numpy as np
import pytest

from experiments.configs import tiny
from rlvr_jax.models import loader
from rlvr_jax.models import tokenizer as tokenizer_lib
from rlvr_jax.rewards import scorers
from rlvr_jax.training import credit as credit_lib
from rlvr_jax.training import loop
from rlvr_jax.training import scrl_credit

EPS = 1e-6
# grpo over two rewards that differ by 1: mean 0.5, std (ddof=1) sqrt(0.5).
A2 = 0.5 / (np.sqrt(0.5) + EPS)


@pytest.fixture(scope="module")
def tokenizer():
  return tokenizer_lib.load_tokenizer(loader.default_gguf_path())


def _config(k):
  c = tiny.get_config("scrl")
  c.algo.scrl_k = k
  c.reward.checker = "exact"
  c.reward.format_weight = 0.2
  return c


def _chain(*pairs):
  return [{"statement": s, "ground_truth": g} for s, g in pairs]


# Problem 1 stores a chain of 4; with K = 3 the trainer keeps the last 3.
# Problem 2 has a chain of 2 (K_2 = 2 < K).
RECORDS = [
    {"id": "p1", "problem": "What is (2 + 3) * 4 - 2?", "answer": "18",
     "task": "math", "metadata": {}, "subproblems": _chain(
         ("What is 2?", "2"), ("What is 2 + 3?", "5"),
         ("What is (2 + 3) * 4?", "20"), ("What is (2 + 3) * 4 - 2?", "18"))},
    {"id": "p2", "problem": "What is 3 * 7?", "answer": "21", "task": "math",
     "metadata": {}, "subproblems": _chain(
         ("What is 3 * 7 / 3?", "7"), ("What is 3 * 7?", "21"))},
]
# Rows of a group: 2 curriculum, then 2 plain (algorithms/scrl.py order).
RESPONSES = [
    # p1 curriculum: r = [1, 1, 1]; a unicode character inside a block; text
    # before the first block; "</p1><p2>" puts "><" in one token.
    "Plan first.\n<p1>2 + 3 = \\boxed{5}</p1><p2>5 × 4 = \\boxed{20}</p2>\n"
    "<p3>20 - 2 = \\boxed{18}</p3>",
    # r = [1, 0, 1] -> R = [1, 0, 0] (prefix rule).
    "<p1>\\boxed{5}</p1>\n<p2>\\boxed{21}</p2>\n<p3>\\boxed{18}</p3>\nDone.",
    "(2 + 3) * 4 - 2 = \\boxed{18}",  # plain, right: reward 1 + 0.2 format
    "\\boxed{3}",  # plain, wrong: reward 0.2
    # p2 curriculum: truncated in block 2 (malformed: r = [0, 0]).
    "<p1>\\boxed{7}</p1>\n<p2>3 * 7 = 2",
    "<p1>21 / 3 = \\boxed{7}</p1>\n<p2>\\boxed{21}</p2>",  # r = [1, 1]
    "\\boxed{21}",
    "It is \\boxed{21}.",
]


def _spans(text, k):
  """[start, end) of `<pj>` through `</pj>` for j = 1..k (found by str.find)."""
  spans = []
  for j in range(1, k + 1):
    start = text.find(f"<p{j}>")
    spans.append((start, text.find(f"</p{j}>") + len(f"</p{j}>")))
  return spans


def _rollout(tokenizer):
  """RESPONSES as a rollout batch: (token id lists, tokens [8, T], mask
  [8, T], truncated [8]); row 4 is cut by the length limit."""
  eos = tokenizer.eos_token_id
  rows = [tokenizer.encode(t, add_special_tokens=False) + [eos]
          for t in RESPONSES]
  rows[4] = rows[4][:-1]  # the truncated response has no EOS
  T = max(map(len, rows)) + 3
  tokens = np.full((8, T), tokenizer.pad_token_id, np.int32)
  mask = np.zeros((8, T), np.float32)
  for b, ids in enumerate(rows):
    tokens[b, :len(ids)] = ids
    mask[b, :len(ids)] = 1.0
  truncated = np.array([False] * 4 + [True] + [False] * 3)
  return rows, tokens, mask, truncated


@pytest.mark.usefixtures("strict_rank")
def test_scrl_credit_advantages_by_hand(tokenizer):
  credit = scrl_credit.ScrlCredit(
      config=_config(3), tokenizer=tokenizer, pool=None,
      render_plain=lambda r: "plain: " + r["problem"])
  prompts, examples = credit.prompts(RECORDS)
  assert prompts[2:4] == ["plain: " + RECORDS[0]["problem"]] * 2
  assert prompts[0] == prompts[1]
  assert "Problem1: What is 2 + 3?" in prompts[0]  # "What is 2?" was cut
  assert "Problem3: What is (2 + 3) * 4 - 2?" in prompts[0]
  assert "<|im_start|>assistant" in prompts[0]  # few_shot -> chat template
  assert [len(e["subproblems"]) for e in examples] == [3] * 4 + [2] * 4

  rows, tokens, mask, truncated = _rollout(tokenizer)
  T = tokens.shape[1]
  adv, loss_mask, metrics = credit.advantages(
      examples, RESPONSES, tokens, mask, truncated)

  # Per-position advantages (grpo over the 2 curriculum rows of a problem):
  # p1: R = [[1,1,1],[1,0,0]] -> j=1 no variance: 0; j=2, j=3: +-A2.
  # p2: R = [[0,0],[1,1]] -> both positions -+A2; position 3 absent.
  positional = {0: [0.0, A2, A2], 1: [0.0, -A2, -A2], 5: [A2, A2]}
  expected = np.zeros((8, T), np.float32)
  for b, values in positional.items():
    enc = tokenizer(RESPONSES[b], add_special_tokens=False,
                    return_offsets_mapping=True)
    assert enc["input_ids"] == rows[b][:-1]
    spans = _spans(RESPONSES[b], len(values))
    for t, (start, end) in enumerate(enc["offset_mapping"]):
      # The first block a token overlaps (independent of scrl_blocks).
      hits = [j for j, (s, e) in enumerate(spans) if start < e and end > s]
      if hits:
        expected[b, t] = values[hits[0]]
  # Plain rows: grpo over [1.2, 0.2] (p1) and [1.2, 1.2] (p2).
  expected[2] = A2 * mask[2]
  expected[3] = -A2 * mask[3]
  np.testing.assert_allclose(adv, expected, rtol=1e-6, atol=1e-7)

  # The malformed row (4) and everything outside the blocks is 0, but every
  # response token stays in the token-mean denominator.
  assert not adv[4].any()
  np.testing.assert_array_equal(loss_mask, mask)
  text0 = RESPONSES[0]
  outside = [t for t, (s, e) in enumerate(tokenizer(
      text0, add_special_tokens=False, return_offsets_mapping=True)
      ["offset_mapping"]) if e <= text0.find("<p1>")]
  assert outside and not adv[0, outside].any()  # "Plan first.\n"
  assert adv[0, len(rows[0]) - 1] == 0.0  # EOS decodes to no character
  # "><" of "</p1><p2>" is one token; it belongs to block 1 (A = 0), and
  # block 2's tokens start after it.
  gt_token = next(t for t in range(len(rows[0]))
                  if tokenizer.decode([int(tokens[0, t])]) == "><")
  assert adv[0, gt_token] == 0.0 and adv[0, gt_token + 1] == np.float32(A2)

  # Metrics by hand. Rows with position j: p1 x2 for j = 1..3, p2 x2 for
  # j = 1, 2. R(1) = [1,1,0,1], R(2) = [1,0,0,1], R(3) = [1,0].
  # r(3) of p1 = [1,1]; r(K_p) = [1,1,0,1]; solved prefixes [3,1,0,2].
  assert metrics["scrl/solve_rate/p1"] == pytest.approx(0.75)
  assert metrics["scrl/solve_rate/p2"] == pytest.approx(0.5)
  assert metrics["scrl/solve_rate/p3"] == pytest.approx(0.5)
  assert metrics["scrl/solve_rate_raw/p3"] == pytest.approx(1.0)
  assert metrics["scrl/mean_solved_prefix"] == pytest.approx(1.5)
  assert metrics["scrl/malformed_frac"] == pytest.approx(0.25)
  assert metrics["scrl/accuracy/curriculum"] == pytest.approx(0.75)
  assert metrics["scrl/accuracy/plain"] == pytest.approx(0.75)
  assert metrics["reward/accuracy"] == pytest.approx(0.75)
  assert metrics["response/truncated_frac"] == pytest.approx(1 / 8)
  lengths = mask.sum(axis=1)
  assert metrics["scrl/response_length/curriculum"] == pytest.approx(
      lengths[[0, 1, 4, 5]].mean())
  assert metrics["scrl/response_length/plain"] == pytest.approx(
      lengths[[2, 3, 6, 7]].mean())


@pytest.mark.usefixtures("strict_rank")
def test_scrl_mask_truncated_and_reward_keys_match_grpo(tokenizer):
  config = _config(3)
  config.reward.mask_truncated = True
  credit = scrl_credit.ScrlCredit(
      config=config, tokenizer=tokenizer, pool=None,
      render_plain=lambda r: "plain: " + r["problem"])
  _, examples = credit.prompts(RECORDS)
  _, tokens, mask, truncated = _rollout(tokenizer)
  _, loss_mask, metrics = credit.advantages(
      examples, RESPONSES, tokens, mask, truncated)
  # Row 4 (truncated) leaves the loss; every other row keeps its mask.
  want = mask.copy()
  want[4] = 0.0
  np.testing.assert_array_equal(loss_mask, want)
  assert mask[4].sum() > 0

  # SCRL logs the same reward/* keys as the GRPO family (OutcomeCredit).
  # Plain rows: rows 2, 3, 6, 7 -> correct [1, 0, 1, 1]; row 3 is wrong.
  assert metrics["reward/reason/wrong"] == pytest.approx(0.25)
  assert metrics["reward/reason/timeout"] == 0.0
  assert metrics["reward/groups_mixed"] == pytest.approx(0.5)
  reward_fn = scorers.RewardFunction(checker="exact", max_response_len=64)
  outcome = credit_lib.OutcomeCredit(
      estimator="grpo", group_size=4, render=lambda r: r["problem"],
      reward_fn=reward_fn, mask_truncated=True)
  _, _, grpo_metrics = outcome.advantages(
      examples, RESPONSES, tokens, mask, truncated)
  def reward_keys(m):
    return sorted(k for k in m if k.startswith("reward/"))
  assert reward_keys(metrics) == reward_keys(grpo_metrics)
  assert "reward/reason/crash" in reward_keys(metrics)


def test_tiny_scrl_run_logs_finite_metrics(tmp_path):
  """Two steps of the tiny config with --config.algo.advantage=scrl.

  Not under strict_rank: the model code broadcasts norm scales.
  """
  c = tiny.get_config("scrl")
  c.data.task = "chain_sum"
  c.data.task_kwargs = {"min_terms": 3, "max_terms": 4, "min_digits": 1,
                        "max_digits": 1}
  c.rl.steps = 2
  c.rl.prompts_per_batch = 2
  c.rl.mini_batches = 1  # one 8-row mini-batch: one row per simulated device
  c.rl.group_size = 4
  c.rl.max_prompt_len = 256  # the curriculum prompt of 4 terms: ~220 tokens
  c.data.eval_size = 4
  c.train.eval_before = False
  c.train.eval_after = False
  c.train.tensorboard = False
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(c, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows] == [1, 2]
  keys = ["scrl/mean_solved_prefix", "scrl/malformed_frac",
          "scrl/accuracy/curriculum", "scrl/accuracy/plain",
          "scrl/response_length/curriculum", "scrl/response_length/plain"]
  keys += [f"scrl/solve_rate/p{j}" for j in range(1, 5)]
  keys += [f"scrl/solve_rate_raw/p{j}" for j in range(1, 5)]
  for r in rows:
    for key in keys + ["policy/loss", "train/grad_norm"]:
      assert np.isfinite(r[key]), key
    assert r["train/skipped"] == 0.0
    # 8 random tokens cannot hold even one block with a box.
    assert r["scrl/malformed_frac"] == 1.0
    assert r["scrl/mean_solved_prefix"] == 0.0
