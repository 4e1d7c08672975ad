"""Tests of answer extraction, the math-verify pool and the reward function.

One worker pool serves the whole module (module-scoped fixture, 2 workers).
math-verify's own alarm (2 s per call) stops most slow items before the pool's
wall-clock limit (5 s) has to kill a worker, because a replacement worker
takes several seconds to start on a loaded machine; the kill path is tested
with calls that hang or crash on purpose.
"""

import fractions
import functools
import os
import pathlib
import re

import numpy as np
import pytest
import reasoning_gym

from rlvr_jax.rewards import answers
from rlvr_jax.rewards import math_checker
from rlvr_jax.rewards import safe_arith
from rlvr_jax.rewards import scorers
from rlvr_jax.training import credit


@pytest.fixture(scope="module")
def pool():
  with math_checker.MathChecker(
      num_workers=2, timeout_s=5.0, math_verify_timeout_s=2,
      warmup=(scorers.REASONING_GYM_WARMUP,)) as checker:
    yield checker


def _category(reason):
  return None if reason is None else reason.split(":", 1)[0]


# ---------------------------------------------------------------- extraction


@pytest.mark.parametrize("text, expected", [
    (r"so $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
    (r"\boxed{\sqrt{\frac{a}{b^{2}}}}", r"\sqrt{\frac{a}{b^{2}}}"),
    (r"first \boxed{1}, then \boxed{ 2 }", "2"),
    (r"\boxed{1} then \fbox{7}", "7"),
    (r"\fbox{x+1}", "x+1"),
    (r"\boxed{\{1,2\}}", r"\{1,2\}"),
    (r"answer: $\boxed 5$ done", "5"),
    (r"\boxed {4}.", "4"),
    (r"\boxed{\boxed{3}}", r"\boxed{3}"),
    (r"\boxed{} and \boxed{9}", "9"),
    ("no box here, 42", None),
    (r"\boxed{5} and finally \boxed{6", None),
    (r"\boxed{6} \boxed{}", None),
    (r"\boxed", None),
    (r"\boxedx{3}", None),
    ("", None),
])
def test_extract_boxed(text, expected):
  assert answers.extract_boxed(text) == expected


@pytest.mark.parametrize("text, expected", [
    (r"So the answer is $\boxed{3}$.", True),
    (r"\[\boxed{3}\]" + "\n", True),
    (r"**\boxed{3}**", True),
    (r"\boxed{3} because 1+2=3", False),
    (r"\boxed{3} or \boxed{4}", False),
    (r"\boxed{}", False),
    (r"\boxed{3", False),
    ("3", False),
])
def test_has_clean_box(text, expected):
  assert answers.has_clean_box(text) is expected


def test_extract_last_number_and_gold_answer():
  assert answers.extract_last_number("2 apples, then -3.5 and 1,000.") == (
      "1,000")
  assert answers.extract_last_number("x = -.5") == "-.5"
  assert answers.extract_last_number("none") is None
  assert answers.gold_answer(r"so x = \boxed{\frac{3}{4}}.") == r"\frac{3}{4}"
  assert answers.gold_answer("  -61 ") == "-61"


@pytest.mark.parametrize("text, expected", [
    (" +001,000.50 ", "1000.5"),
    ("$1{,}000$", "1000"),
    ("-0.0", "0"),
    ("7.", "7"),
    (".5", "0.5"),
    ("\u22123", "-3"),
    ("1" * 100000, "1" * 100000),
    ("1,00", None),
    ("1e5", None),
    (".", None),
    ("-", None),
    ("x", None),
])
def test_canonical_number(text, expected):
  assert answers.canonical_number(text) == expected


def test_normalize_answer():
  assert answers.normalize_answer(" $ x  +  1 $. ") == "x + 1"
  assert answers.normalize_answer("A") != answers.normalize_answer("a")
  assert answers.normalize_answer("1,000.0") == answers.normalize_answer(
      "1000")


# ---------------------------------------------------------- overlong penalty


def test_overlong_penalty_by_hand():
  # L = 16, C = 4: no penalty up to L - C = 12, then (12 - l) / 4.
  # l=13 -> -1/4, l=14 -> -2/4, l=15 -> -3/4, l=16 -> -4/4, l=20 -> clip -1.
  lengths = np.array([0, 11, 12, 13, 14, 15, 16, 20], np.int32)
  got = scorers.overlong_penalty(lengths, max_response_len=16,
                                 overlong_buffer=4)
  np.testing.assert_array_equal(
      got, np.array([0, 0, 0, -0.25, -0.5, -0.75, -1, -1], np.float32))
  assert got.dtype == np.float32
  np.testing.assert_array_equal(
      scorers.overlong_penalty(lengths, max_response_len=16,
                               overlong_buffer=0), np.zeros([8], np.float32))
  # C = L: the penalty spans the whole length, l=4 of 16 -> -4/16.
  np.testing.assert_array_equal(
      scorers.overlong_penalty(np.array([0, 4, 16]), max_response_len=16,
                               overlong_buffer=16),
      np.array([0, -0.25, -1], np.float32))


def test_overlong_penalty_matches_numpy_reference():
  rng = np.random.default_rng(0)
  lengths = rng.integers(0, 300, size=64)
  max_len, buffer = 256, 64

  def reference(l):
    if l <= max_len - buffer:
      return 0.0
    if l <= max_len:
      return (max_len - buffer - l) / buffer
    return -1.0

  np.testing.assert_allclose(
      scorers.overlong_penalty(lengths, max_response_len=max_len,
                               overlong_buffer=buffer),
      [reference(l) for l in lengths], rtol=0, atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_response_len=0, overlong_buffer=0), "max_response_len"),
    (dict(max_response_len=8, overlong_buffer=9), "overlong_buffer"),
    (dict(max_response_len=8, overlong_buffer=-1), "overlong_buffer"),
])
def test_overlong_penalty_rejects_bad_flags(kwargs, message):
  with pytest.raises(ValueError, match=message):
    scorers.overlong_penalty(np.zeros([2], np.int32), **kwargs)
  with pytest.raises(ValueError, match="response_lengths"):
    scorers.overlong_penalty(np.zeros([2, 2], np.int32), max_response_len=8,
                             overlong_buffer=2)


# -------------------------------------------------------------- math-verify


def test_math_verify_equivalences(pool):
  pairs = [  # (gold, prediction, expected score)
      ("1/2", "0.5", 1.0),
      ("0.5", "1/2", 1.0),
      (r"\frac{1}{2}", "0.5", 1.0),
      (r"\dfrac{3}{4}", "0.75", 1.0),
      ("2x+1", "1+2x", 1.0),
      (r"\frac{\sqrt{2}}{2}", r"\sqrt{2}/2", 1.0),
      (r"\{1,2\}", r"\{2,1\}", 1.0),
      ("[1,3)", "[1, 3)", 1.0),
      (r"(-\infty, 2]", r"(-\infty,2]", 1.0),
      ("(1,3)", "[1,3)", 0.0),
      ("x=2", "2", 1.0),
      ("2x+1", "2x-1", 0.0),
      ("3.1415926", "3.14159265", 1.0),  # math-verify rounds to 6 places.
  ]
  scores, reasons = pool.score([g for g, _, _ in pairs],
                               [p for _, p, _ in pairs])
  np.testing.assert_array_equal(scores, [e for _, _, e in pairs])
  assert scores.dtype == np.float32
  for score, reason in zip(scores, reasons):
    assert (reason is None) == (score == 1.0)
    assert _category(reason) in (None, math_checker.WRONG)


def test_math_verify_is_asymmetric(pool):
  # Gold first on purpose: an inequality gold accepts the interval it
  # describes, an interval gold does not accept the inequality.
  scores, _ = pool.score(["1<x<2", "(1,2)"], ["(1,2)", "1<x<2"])
  np.testing.assert_array_equal(scores, [1.0, 0.0])


def test_plain_numbers_skip_the_pool_and_a_dead_pool_scores_zero():
  # Every worker of this pool dies during its warm-up, so any item that
  # reached the pool would come back with a `crash` reason.
  broken = math_checker.MathChecker(num_workers=3,
                                    warmup=((os._exit, (1,)),))
  golds = ["1,000", "7", "-0", "2.50", "1" * 5000]
  preds = ["1000.0", "8", "0.0", "2.5", "1" * 4999 + "2"]
  scores, reasons = broken.score(golds, preds)
  np.testing.assert_array_equal(scores, [1, 0, 1, 1, 0])
  assert [_category(r) for r in reasons] == [
      None, math_checker.WRONG, None, None, math_checker.WRONG]
  # Differing decimals do go to the pool (math-verify rounds them); with no
  # worker able to start, the item scores 0 with a reason, and start() says
  # why.
  scores, reasons = broken.score(["2.5"], ["2.4"])
  np.testing.assert_array_equal(scores, [0.0])
  assert _category(reasons[0]) == math_checker.CRASH
  with pytest.raises(RuntimeError, match="failed to start"):
    broken.start()
  broken.close()


def test_hung_and_crashed_workers_are_replaced(pool):
  # 9**9**9 is a 370-million-digit power computed in C, which no signal
  # interrupts, so its worker hangs until the pool kills it.
  countdown = reasoning_gym.create_dataset("countdown", size=1, seed=0)[0]
  check = functools.partial(math_checker.math_verify_item, timeout_s=2)
  scores, reasons = pool.run([
      (pow, (9, 9**9)),
      (os._exit, (3,)),
      (check, ("1/2", "0.5")),
      (len, ("not a (score, reason) pair",)),
      (lambda: (1.0, None), ()),  # cannot be pickled
      (scorers.reasoning_gym_item, (countdown["answer"], countdown)),
  ])
  np.testing.assert_array_equal(scores, [0, 0, 1, 0, 0, 1])
  assert reasons[0] == "timeout: no result within 5s, worker killed"
  assert reasons[1] == "crash: worker died (exit code 3)"
  assert reasons[2] is None
  assert reasons[3].startswith("error: TypeError:")
  assert reasons[4].startswith("error: cannot pickle the call:")
  assert reasons[5] is None
  # The replacement workers serve the next batch.
  scores, reasons = pool.score(["2x+1"], ["x+x+1"])
  np.testing.assert_array_equal(scores, [1.0])


def test_checker_rejects_bad_arguments(pool):
  for kwargs, name in [(dict(num_workers=0), "num_workers"),
                       (dict(timeout_s=0), "timeout_s"),
                       (dict(math_verify_timeout_s=0.5),
                        "math_verify_timeout_s"),
                       (dict(startup_timeout_s=-1), "startup_timeout_s")]:
    with pytest.raises(ValueError, match=name):
      math_checker.MathChecker(**kwargs)
  with pytest.raises(ValueError, match="golds has 2 items but preds has 1"):
    pool.score(["1", "2"], ["1"])


# ------------------------------------------------------------ reward function


def test_reward_function_combines_components_by_hand(pool):
  reward_fn = scorers.RewardFunction(checker="math_verify", pool=pool,
                                     max_response_len=16, overlong_buffer=4,
                                     format_weight=0.5)
  examples = [{"problem": "1/2 as a decimal?", "answer": "0.5"}] * 4
  responses = [
      r"It is $\boxed{\frac{1}{2}}$.",  # correct, clean box
      r"\boxed{0.4} no wait \boxed{0.5}",  # correct, two boxes
      "the answer is 0.5",  # no box
      r"\boxed{0.3}",  # wrong, clean box
  ]
  lengths = np.array([10, 14, 16, 13])
  out = reward_fn(examples, responses, lengths)
  # correct + 0.5 * format + overlong, overlong = clip((12 - l) / 4, -1, 0):
  # row 0: 1 + 0.5*1 + 0     = 1.5
  # row 1: 1 + 0.5*0 - 2/4   = 0.5
  # row 2: 0 + 0.5*0 - 4/4   = -1
  # row 3: 0 + 0.5*1 - 1/4   = 0.25
  np.testing.assert_array_equal(out.correct, [1, 1, 0, 0])
  np.testing.assert_array_equal(out.format, [1, 0, 0, 1])
  np.testing.assert_array_equal(out.overlong, [0, -0.5, -1, -0.25])
  np.testing.assert_array_equal(out.rewards, [1.5, 0.5, -1, 0.25])
  assert out.rewards.dtype == np.float32
  assert [_category(r) for r in out.reasons] == [
      None, None, math_checker.NO_ANSWER, math_checker.WRONG]
  metrics = out.metrics()
  assert metrics["reward/count"] == 4
  assert metrics["reward/total_sum"] == 1.25  # 1.5 + 0.5 - 1 + 0.25
  assert metrics["reward/correct_sum"] == 2
  assert metrics["reward/format_sum"] == 2
  assert metrics["reward/overlong_sum"] == -1.75
  assert metrics["reward/reason/no_answer"] == 1
  assert metrics["reward/reason/wrong"] == 1
  assert metrics["reward/reason/timeout"] == 0


def test_last_number_fallback_and_exact_checker():
  examples = [{"problem": "p", "answer": "1000"},
              {"problem": "p", "answer": r"so \boxed{A}"},
              {"problem": "p", "answer": "A"},
              {"problem": "p", "answer": "12"}]
  responses = [r"\boxed{1,000}", r"\boxed{ A }", r"\boxed{a}",
               "I think it is 11, no, 12."]
  lengths = np.ones([4], np.int32)
  plain = scorers.RewardFunction(checker="exact", max_response_len=8)
  fallback = scorers.RewardFunction(checker="exact", max_response_len=8,
                                    last_number_fallback=True)
  np.testing.assert_array_equal(plain(examples, responses, lengths).correct,
                                [1, 1, 0, 0])
  out = fallback(examples, responses, lengths)
  np.testing.assert_array_equal(out.correct, [1, 1, 0, 1])
  np.testing.assert_array_equal(out.format, [1, 1, 1, 0])


def test_answers_over_max_answer_chars_are_not_checked():
  reward_fn = scorers.RewardFunction(checker="exact", max_response_len=8,
                                     max_answer_chars=1000)
  gold = "1" * 1000
  out = reward_fn([{"problem": "p", "answer": gold}] * 2,
                  [rf"\boxed{{{gold}}}", rf"\boxed{{{gold}1}}"],
                  np.ones([2], np.int32))
  np.testing.assert_array_equal(out.correct, [1, 0])
  assert out.reasons[1] == (
      "too_long: answer of 1001 characters > max_answer_chars=1000")


def _basic_arithmetic_example():
  entry = reasoning_gym.create_dataset("basic_arithmetic", size=1, seed=3)[0]
  return entry, {"problem": entry["question"], "answer": entry["answer"],
                 "metadata": entry["metadata"], "task": "basic_arithmetic"}


def test_reasoning_gym_counts_only_full_credit(pool):
  entry, example = _basic_arithmetic_example()
  gold = entry["answer"]
  close = gold + "1"  # contains the gold: reasoning-gym gives partial credit
  score_fn = reasoning_gym.get_score_answer_fn("basic_arithmetic")
  assert score_fn(gold, entry) == 1.0
  assert 0.0 < score_fn(close, entry) < 1.0
  assert scorers.reasoning_gym_item(gold, entry) == (1.0, None)
  assert scorers.reasoning_gym_item(close, entry)[0] == 0.0

  reward_fn = scorers.RewardFunction(checker="reasoning_gym", pool=pool,
                                     max_response_len=64)
  responses = [rf"\boxed{{{gold}}}", rf"\boxed{{{close}}}", "no idea"]
  out = reward_fn([example] * 3, responses, np.array([5, 5, 5]))
  np.testing.assert_array_equal(out.correct, [1, 0, 0])
  assert out.reasons[0] is None
  assert out.reasons[1].startswith("wrong: reasoning-gym score 0.")
  assert _category(out.reasons[2]) == math_checker.NO_ANSWER


def test_adversarial_batch_scores_zero_with_reasons(pool):
  # max_answer_chars is raised so that every answer reaches the checkers.
  reward_fn = scorers.RewardFunction(checker="math_verify", pool=pool,
                                     max_response_len=64,
                                     max_answer_chars=1_000_000)
  nested = r"\frac{" * 500 + "1" + "}{2}" * 500
  adversarial = [
      r"\boxed{" + "1" * 100000 + "}",  # huge number, written out
      r"\boxed{9^{9^{9}}}",  # huge number, as a power
      r"\boxed{9**9**9}",
      r"\boxed{" + nested + "}",  # \frac 500 deep
      r"\boxed{(x+1)^{100000} - (x+2)^{100000}}",  # slow for sympy
      "\\boxed{\u00bd \u221e \U0001d7d8 \u2211 \u4e2d\u6587 \u200b}",
      "\\boxed{\x00\x07}",
      "",
      None,
      r"\boxed{" + "x+" * 50000 + "1}",  # 100k characters in the box
      "a" * 100000,  # 100k characters, no box
      r"\boxed{5} \boxed{" + "{" * 1000,  # unbalanced
  ]
  normal = r"The answer is $\boxed{\frac{1}{2}}$."
  responses = adversarial[:4] + [normal] + adversarial[4:]
  examples = [{"problem": "p", "answer": "0.5"}] * len(responses)
  out = reward_fn(examples, responses, np.ones([len(responses)], np.int32))
  expected = np.zeros([len(responses)], np.float32)
  expected[4] = 1.0
  np.testing.assert_array_equal(out.correct, expected)
  np.testing.assert_array_equal(out.rewards, expected)
  # Every other row has a reason; how far math-verify gets before its alarm
  # depends on the machine, so the slow rows may read `timeout`,
  # `unparsable` or `wrong`, but never `crash` or `error`.
  assert out.reasons[4] is None
  for i, reason in enumerate(out.reasons):
    if i != 4:
      assert _category(reason) in (
          math_checker.WRONG, math_checker.NO_ANSWER, math_checker.UNPARSABLE,
          math_checker.TIMEOUT), (i, reason)
  # No box or an unbalanced last box: the answer is missing.
  for i in (8, 9, 11, 12):
    assert _category(out.reasons[i]) == math_checker.NO_ANSWER


def test_reward_function_rejects_bad_configuration(pool):
  with pytest.raises(ValueError, match="checker must be one of"):
    scorers.RewardFunction(checker="sympy", pool=pool, max_response_len=8)
  with pytest.raises(ValueError, match="needs a pool"):
    scorers.RewardFunction(checker="math_verify", max_response_len=8)
  with pytest.raises(ValueError, match="format_weight"):
    scorers.RewardFunction(checker="exact", max_response_len=8,
                           format_weight=-1.0)
  with pytest.raises(ValueError, match="overlong_buffer"):
    scorers.RewardFunction(checker="exact", max_response_len=8,
                           overlong_buffer=9)
  reward_fn = scorers.RewardFunction(checker="exact", max_response_len=8)
  with pytest.raises(ValueError, match="must all have B rows"):
    reward_fn([{"answer": "1"}], ["a", "b"], np.ones([2]))
  with pytest.raises(ValueError, match=r"examples\[0\] has no string"):
    reward_fn([{"problem": "p"}], ["a"], np.ones([1]))
  rg_fn = scorers.RewardFunction(checker="reasoning_gym", pool=pool,
                                 max_response_len=8)
  with pytest.raises(ValueError, match="source_dataset"):
    rg_fn([{"answer": "1"}], ["a"], np.ones([1]))


# ------------------------------------------------------------------- safety


def _injections(marker):
  """Boxed answers that would create `marker` if any checker ran them."""
  touch = f"__import__('pathlib').Path('{marker}').touch()"
  return [
      touch,
      f"{touch} or 25 * 4",
      f"(lambda: {touch})()",
      f"f'{{{touch}}}'",
      "().__class__.__bases__[0].__subclasses__()",
      f"[x for x in [{touch}]]",
      f"exec(\"{touch}\")",
  ]


def test_code_injection_answers_never_run(pool, tmp_path):
  # Before the fix, reasoning-gym's countdown scorer passed the boxed answer
  # to sympy.parse_expr (eval) in the worker and created the marker file.
  countdown = reasoning_gym.create_dataset("countdown", size=1, seed=3)[0]
  puzzle24 = reasoning_gym.create_dataset("puzzle24", size=1, seed=3)[0]
  queens = reasoning_gym.create_dataset("n_queens", size=1, seed=3)[0]
  spiral = reasoning_gym.create_dataset("spiral_matrix", size=1, seed=3)[0]
  rg_examples = [{"problem": e["question"], "answer": e["answer"],
                  "metadata": e["metadata"]}
                 for e in (countdown, puzzle24, queens, spiral)]
  marker = tmp_path / "pwned"
  payloads = _injections(marker)
  checks = [("exact", None, [{"problem": "p", "answer": "100"}]),
            ("math_verify", pool, [{"problem": "p", "answer": "100"}]),
            ("reasoning_gym", pool, rg_examples)]
  for checker, checker_pool, examples in checks:
    reward_fn = scorers.RewardFunction(checker=checker, pool=checker_pool,
                                       max_response_len=64)
    rows = [(e, rf"\boxed{{{p}}}") for e in examples for p in payloads]
    out = reward_fn([e for e, _ in rows], [r for _, r in rows],
                    np.ones([len(rows)], np.int32))
    np.testing.assert_array_equal(out.correct, np.zeros(len(rows)),
                                  err_msg=checker)
    assert not marker.exists(), checker
  # The safe path still gives reasoning-gym's own verdict on real answers:
  # the reference solution scores 1 (countdown: every number once, value =
  # target), a wrong value or a missing number does not.
  reward_fn = scorers.RewardFunction(checker="reasoning_gym", pool=pool,
                                     max_response_len=64)
  gold = countdown["answer"]
  first = str(countdown["metadata"]["numbers"][0])
  responses = [rf"\boxed{{{gold}}}", rf"\boxed{{({gold}) + 1}}",
               rf"\boxed{{{first}}}", rf"\boxed{{{queens['answer']}}}"]
  out = reward_fn([rg_examples[0]] * 3 + [rg_examples[2]], responses,
                  np.ones([4], np.int32))
  np.testing.assert_array_equal(out.correct, [1, 0, 0, 1])


def test_safe_arith_whitelist_by_hand():
  # (25 - 5) * 3 / 4 = 20 * 3 / 4 = 15; 0.1 + 0.2 = 3/10 exactly; 05 = 5.
  assert safe_arith.evaluate("(25 - 5) * 3 / 4") == 15
  assert safe_arith.evaluate("0.1 + 0.2") == fractions.Fraction(3, 10)
  assert safe_arith.evaluate("-(05 - 7) / 3") == fractions.Fraction(2, 3)
  for text in _injections("/tmp/x") + [
      "2 ** 3", "2 ^ 3", "7 // 2", "'1'", "True + 1", "1 < 2", "1e999",
      "-" * 600 + "1", "1 +" * 400 + "1"]:
    with pytest.raises(safe_arith.UnsafeExpressionError):
      safe_arith.evaluate(text)
  with pytest.raises(ZeroDivisionError):
    safe_arith.evaluate("1 / (2 - 2)")


def test_refused_reasoning_gym_task_names_the_flag():
  example = {"problem": "p", "answer": "x**2",
             "metadata": {"source_dataset": "polynomial_multiplication"}}
  reward_fn = scorers.RewardFunction(checker="reasoning_gym",
                                     pool=math_checker.MathChecker(),
                                     max_response_len=8)
  with pytest.raises(ValueError, match="polynomial_multiplication.*"
                     "--config.reward.checker"):
    reward_fn([example], [r"\boxed{x}"], np.ones([1], np.int32))


def test_reasoning_gym_eval_sites_are_all_audited():
  # Every reasoning-gym file that calls eval/exec/parse_expr/sympify, with
  # why it is safe here; a new one (another reasoning-gym version) fails.
  audited = {
      "games/countdown.py", "games/puzzle24.py",  # safe_arith
      "algorithmic/binary_matrix.py", "games/n_queens.py",  # eval disabled
      "algorithmic/spiral_matrix.py", "algorithmic/string_insertion.py",
      "algebra/simple_integration.py", "algebra/intermediate_integration.py",
      "algebra/polynomial_multiplication.py",  # refused
      "algorithmic/number_sorting.py",  # evals the gold answer only
      "code/codeio.py",  # execs generator code, scores with json
      "arithmetic/basic_arithmetic.py", "arithmetic/bitwise_arithmetic.py",
      "arithmetic/gsm_symbolic/generators_00_49.py",
      "arithmetic/gsm_symbolic/generators_50_99.py",  # generators only
      "logic/propositional_logic.py",  # its own parser named parse_expr
  }
  root = os.path.dirname(reasoning_gym.__file__)
  pattern = re.compile(r"(?<![\w.])(eval|exec)\(|parse_expr\(|sympify\(")
  found = set()
  for directory, _, names in os.walk(root):
    for name in names:
      if name.endswith(".py"):
        path = os.path.join(directory, name)
        with open(path, encoding="utf-8") as f:
          if pattern.search(f.read()):
            found.add(os.path.relpath(path, root))
  assert found <= audited, sorted(found - audited)


def test_workers_cannot_write_files(pool, tmp_path):
  # RLIMIT_FSIZE = 0 in a warm worker: a write fails (the empty file may be
  # created, nothing is written), and the worker's cwd is a temporary folder.
  target = tmp_path / "written"
  scores, reasons = pool.run([(pathlib.Path.write_text, (target, "data")),
                              (os.getcwd, ())])
  assert scores[0] == 0 and "File too large" in reasons[0]
  assert not target.exists() or target.read_text() == ""
  assert _category(reasons[1]) == math_checker.ERROR  # cwd is not a pair


def test_step_metrics_fractions_for_every_reason():
  # B = 8 in groups of 4: one correct row, one row per reason category.
  reasons = [None] + [f"{c}: detail" for c in math_checker.REASON_CATEGORIES]
  assert len(reasons) == 8
  out = scorers.RewardOutput(
      rewards=np.array([1.5, 0, 0, 0, -1, 0, 0, 0.5], np.float32),
      correct=np.array([1, 0, 0, 0, 0, 0, 0, 0], np.float32),
      format=np.array([1, 0, 0, 0, 0, 0, 0, 1], np.float32),
      overlong=np.array([0, 0, 0, 0, -1, 0, 0, 0], np.float32),
      reasons=reasons)
  metrics = out.step_metrics(group_size=4)
  expected = {"reward/mean": 1 / 8,  # (1.5 - 1 + 0.5) / 8
              "reward/accuracy": 1 / 8, "reward/format_rate": 2 / 8,
              "reward/overlong_mean": -1 / 8,
              "reward/groups_mixed": 1 / 2}  # group 0 mixed, group 1 not
  expected.update({f"reward/reason/{c}": 1 / 8
                   for c in math_checker.REASON_CATEGORIES})
  assert metrics == pytest.approx(expected)
  assert sorted(metrics) == sorted(expected)
  with pytest.raises(ValueError, match="group_size"):
    out.step_metrics(group_size=3)


def test_outcome_credit_logs_reason_fractions():
  # Rows: right, wrong, no box, too long (max_answer_chars=3).
  reward_fn = scorers.RewardFunction(checker="exact", max_response_len=8,
                                     max_answer_chars=3)
  oc = credit.OutcomeCredit(estimator="grpo", group_size=2,
                            render=lambda r: r["problem"],
                            reward_fn=reward_fn, mask_truncated=False)
  mask = np.ones([4, 3], np.float32)
  _, _, metrics = oc.advantages(
      [{"problem": "p", "answer": "7"}] * 4,
      [r"\boxed{7}", r"\boxed{8}", "seven", r"\boxed{7777}"],
      np.zeros([4, 3], np.int32), mask, np.zeros([4], bool))
  assert metrics["reward/accuracy"] == 0.25
  assert metrics["reward/reason/wrong"] == 0.25
  assert metrics["reward/reason/no_answer"] == 0.25
  assert metrics["reward/reason/too_long"] == 0.25
  assert metrics["reward/reason/timeout"] == 0.0
  assert metrics["reward/groups_mixed"] == 0.5
