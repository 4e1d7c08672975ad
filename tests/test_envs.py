"""Tests of the environment interface, the tool-call parser and reasoning-gym envs."""

import fractions
import json
import re

import pytest

from rlvr_jax.envs import base
from rlvr_jax.envs import reasoning_gym_env
from rlvr_jax.envs import tools
from rlvr_jax.rewards import math_checker
from rlvr_jax.rewards import scorers

SPECS = (
    tools.ToolSpec("add", "add to cart", {
        "id": tools.Param("string", "product id"),
        "qty": tools.Param("integer", "units"),
        "price": tools.Param("number", "dollars", required=False),
        "gift": tools.Param("boolean", "wrap it", required=False),
    }),
    tools.ToolSpec("checkout", "pay"),
)


def _parse(text, **kwargs):
  return tools.parse_tool_call(text, SPECS, **kwargs)


def _error(text, **kwargs):
  result = _parse(text, **kwargs)
  assert isinstance(result, tools.ToolError), result
  assert result.message.startswith("error: ")
  return result.message


def test_well_formed_call_with_text_around():
  text = ('I will add it. <tool_call>{"name": "add", "arguments": '
          '{"id": "P1", "qty": 2, "price": 3}}</tool_call> done')
  assert _parse(text) == tools.ToolCall("add", {"id": "P1", "qty": 2,
                                                "price": 3})
  assert _parse(tools.format_tool_call("checkout", {})) == tools.ToolCall(
      "checkout", {})
  assert _parse("no call here, \\boxed{3}") is None


@pytest.mark.parametrize("body, needle", [
    ('{"name": "add", "arguments": {"id": "P1", "qty": 2', "not valid JSON"),
    ("{'name': 'checkout', 'arguments': {}}", "not valid JSON"),
    ('[1, 2]', '"name": <string>'),
    ('{"name": 3, "arguments": {}}', '"name": <string>'),
    ('{"name": "checkout", "arguments": []}', '"name": <string>'),
    ('{"name": "checkout"}', '"name": <string>'),
    ('{"name": "checkout", "arguments": {}, "x": 1}', '"name": <string>'),
    ('{"name": "buy", "arguments": {}}', "unknown tool 'buy'; tools: add, checkout"),
    ('{"name": "add", "arguments": {"id": "P1"}}', "needs argument 'qty'"),
    ('{"name": "add", "arguments": {"id": "P1", "qty": 1, "q": 1}}',
     "has no argument 'q'"),
    ('{"name": "add", "arguments": {"id": "P1", "qty": "2"}}',
     "'qty' of add must be a integer, got str"),
    ('{"name": "add", "arguments": {"id": "P1", "qty": 2.0}}',
     "must be a integer, got float"),
    ('{"name": "add", "arguments": {"id": "P1", "qty": true}}',
     "must be a integer, got bool"),
    ('{"name": "add", "arguments": {"id": 7, "qty": 1}}',
     "'id' of add must be a string, got int"),
    ('{"name": "add", "arguments": {"id": "P1", "qty": 1, "price": false}}',
     "'price' of add must be a number, got bool"),
    ('{"name": "add", "arguments": {"id": "P1", "qty": 1, "gift": 1}}',
     "'gift' of add must be a boolean, got int"),
])
def test_malformed_call_is_an_error_observation(body, needle):
  message = _error(f"{tools.TOOL_CALL_OPEN}{body}{tools.TOOL_CALL_CLOSE}")
  assert needle in message


def test_long_nested_several_and_unclosed_calls():
  long_arg = tools.format_tool_call("add", {"id": "x" * 10_000, "qty": 1})
  # The block is 10,000 x's + 37 characters before ('{"name": "add",
  # "arguments": {"id": "') + 13 after ('", "qty": 1}}') = 10,050.
  assert "tool call of 10050 characters; at most 1000" in _error(long_arg)
  # With a large block limit the argument limit catches it.
  assert "'id' of add has 10000 characters; at most 100" in _error(
      long_arg, max_call_chars=20_000)
  deep = "<tool_call>" + "[" * 100_000 + "</tool_call>"
  assert "not valid JSON (RecursionError)" in _error(
      deep, max_call_chars=200_000)
  call = tools.format_tool_call("checkout", {})
  assert "2 tool calls in one turn" in _error(call + " and " + call)
  assert "nested <tool_call> tags" in _error(
      "<tool_call><tool_call>{}</tool_call></tool_call>")
  assert "must start with <tool_call>" in _error(
      '<tool_call>{"name": "checkout", "arguments": {}}')
  assert "must start with <tool_call>" in _error("</tool_call>x<tool_call>")
  assert _error(None) == "error: the turn is not text"
  huge_int = '<tool_call>{"name": "add", "arguments": {"id": "a", "qty": ' + (
      "9" * 5000) + "}}</tool_call>"
  assert "not valid JSON" in _error(huge_int, max_call_chars=10_000)


def test_describe_tools_and_final_answer():
  assert SPECS[0].signature() == (
      "add(id: string, qty: integer, price?: number, gift?: boolean)")
  text = tools.describe_tools(SPECS)
  assert text.splitlines()[1:] == [
      "- add(id: string, qty: integer, price?: number, gift?: boolean): "
      "add to cart", "- checkout(): pay"]
  assert tools.parse_final_answer("so \\boxed{1} no \\boxed{-42}") == "-42"
  assert tools.parse_final_answer("42") is None
  assert tools.parse_final_answer("\\boxed{" + "1" * 11 + "}",
                                  max_answer_chars=10) is None
  with pytest.raises(ValueError, match="max_call_chars"):
    _parse("x", max_call_chars=0)
  with pytest.raises(ValueError, match="type must be one of"):
    tools.Param("list", "x")


@pytest.fixture(scope="module")
def arithmetic_env():
  return reasoning_gym_env.ReasoningGymEnv("basic_arithmetic")


def _value(question: str) -> fractions.Fraction:
  """Independent evaluation of 'Calculate <expression>.' with Fractions."""
  expression = re.fullmatch(r"Calculate (.*)\.", question).group(1)
  expression = re.sub(r"(\d+)", r"fractions.Fraction(\1)", expression)
  return eval(expression, {"fractions": fractions})  # pylint: disable=eval-used


def test_level_table_maps_to_task_config(arithmetic_env):
  expected = [(2, 1), (3, 1), (3, 2), (4, 2), (5, 2), (5, 3), (6, 3), (6, 4)]
  assert arithmetic_env.num_levels == len(expected)
  for level, (terms, digits) in enumerate(expected):
    assert arithmetic_env.levels[level] == {
        "min_terms": terms, "max_terms": terms,
        "min_digits": digits, "max_digits": digits}
    for seed in range(5):
      entry = arithmetic_env.generate(seed=seed, level=level)
      assert entry["metadata"]["num_terms"] == terms
      assert entry["metadata"]["num_digits"] == digits
      numbers = re.findall(r"\d+", entry["question"])
      assert max(len(n) for n in numbers) <= digits
      assert _value(entry["question"]) == int(entry["answer"])


def test_generation_is_deterministic_and_splits_differ(arithmetic_env):
  first = [arithmetic_env.generate(seed=s, level=3) for s in range(20)]
  again = [arithmetic_env.generate(seed=s, level=3) for s in range(20)]
  assert first == again
  assert len({e["question"] for e in first}) > 15
  eval_env = reasoning_gym_env.ReasoningGymEnv("basic_arithmetic",
                                               split="eval")
  other = [eval_env.generate(seed=s, level=3) for s in range(20)]
  assert sum(a["question"] == b["question"] for a, b in zip(first, other)) < 3


def test_one_turn_episode_scores_only_full_credit(arithmetic_env):
  observation = arithmetic_env.reset(seed=3, level=2)
  question = observation.splitlines()[0]
  assert observation.splitlines()[1] == reasoning_gym_env.INSTRUCTION
  gold = _value(question)
  result = arithmetic_env.step(f"It is \\boxed{{{gold}}}")
  assert result == base.StepResult("Answer correct.", True,
                                   {"success": 1.0, "format": 1.0})
  with pytest.raises(RuntimeError, match="reset"):
    arithmetic_env.step("again")
  # The gold is a substring of the answer: reasoning-gym's own scorer gives
  # len(gold) / len(pred) partial credit; the environment gives 0.
  arithmetic_env.reset(seed=3, level=2)
  result = arithmetic_env.step(f"\\boxed{{{gold}1}}")
  assert result.done and result.rewards == {"success": 0.0, "format": 1.0}
  arithmetic_env.reset(seed=3, level=2)
  assert arithmetic_env.step(f"{gold}").rewards == {"success": 0.0,
                                                    "format": 0.0}
  arithmetic_env.reset(seed=3, level=2)
  assert arithmetic_env.step(None).rewards[base.SUCCESS] == 0.0


def test_chain_sum_env():
  env = reasoning_gym_env.ReasoningGymEnv("chain_sum")
  observation = env.reset(seed=0, level=4)
  expression = env.entry["metadata"]["expression"]
  assert len(expression.split("+")) + len(expression.split("-")) - 1 == 5
  assert expression in observation
  total = sum(int(t) for t in re.findall(r"[+-]? ?\d+",
                                         expression.replace(" ", "")))
  assert env.step(f"\\boxed{{{total}}}").rewards[base.SUCCESS] == 1.0


def test_bad_arguments_name_what_is_wrong(arithmetic_env):
  with pytest.raises(ValueError, match="level must be an int in \\[0, 8\\)"):
    arithmetic_env.reset(seed=0, level=8)
  with pytest.raises(ValueError, match="seed must be an int >= 0"):
    arithmetic_env.reset(seed=-1, level=0)
  with pytest.raises(ValueError, match="has no level table"):
    reasoning_gym_env.ReasoningGymEnv("gsm_symbolic")
  with pytest.raises(ValueError, match="needs pool="):
    reasoning_gym_env.ReasoningGymEnv("countdown", levels=[{}])
  with pytest.raises(ValueError, match=r"levels\[1\]\['terms'\]"):
    reasoning_gym_env.ReasoningGymEnv("chain_sum",
                                      levels=[{}, {"terms": 3}])
  with pytest.raises(ValueError, match=r"levels\[0\]="):
    reasoning_gym_env.ReasoningGymEnv(
        "chain_sum", levels=[{"min_terms": 5, "max_terms": 2}])
  with pytest.raises(ValueError, match="split="):
    reasoning_gym_env.ReasoningGymEnv("chain_sum", split="test")
  json.dumps(arithmetic_env.generate(seed=1, level=1))


def test_task_scored_in_the_checker_pool():
  levels = [{"min_numbers": 3, "max_numbers": 3, "min_target": 10,
             "max_target": 50}]
  with math_checker.MathChecker(
      num_workers=1, timeout_s=10.0,
      warmup=(scorers.REASONING_GYM_WARMUP,)) as pool:
    env = reasoning_gym_env.ReasoningGymEnv("countdown", levels=levels,
                                            pool=pool)
    env.reset(seed=4, level=0)
    target = env.entry["metadata"]["target"]
    expression = env.entry["answer"]
    # The gold expression, checked independently, reaches the target.
    assert eval(expression) == target  # pylint: disable=eval-used
    assert env.step(f"\\boxed{{{expression}}}").rewards == {
        "success": 1.0, "format": 1.0}
    env.reset(seed=4, level=0)
    assert env.step("\\boxed{1 + 1}").rewards[base.SUCCESS] == 0.0
