"""The LLM subproblem tool (METHODS.md 3): validation, resume, backends."""

import http.server
import json
import os
import subprocess
import sys
import threading

import pytest

from rlvr_jax.data import files
from rlvr_jax.tools import llm_subproblems
from rlvr_jax.data import scrl_prompts
from rlvr_jax.rewards import math_checker

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RECORDS = [
    {"id": "a", "problem": "Ann has 3 bags of 4 apples and eats 2. How many"
     " are left?", "answer": "10", "solution": "3*4 = 12; 12 - 2 = 10"},
    {"id": "b", "problem": "What is (2 + 5) * 3?", "answer": "21"},
    {"id": "c", "problem": "A car goes 60 km/h for 2.5 h. How far?",
     "answer": "150"},
    {"id": "d", "problem": "What is 10 - 4 / 2?", "answer": "8"},
]
# K = 3: two subproblems of the model's, then the problem itself.
VALID = json.dumps([
    {"statement": "Ann has 3 bags of 4 apples. How many apples?",
     "ground_truth": "12"},
    {"statement": "12 apples, 2 eaten. How many left?", "ground_truth": 10},
    {"statement": "the model's own restatement", "ground_truth": "999"},
])
BROKEN = '[{"statement": "What is 2 + 5?", "ground_truth": "7"}, {"statem'
WRONG_COUNT = json.dumps([{"statement": "What is 2.5 * 60?",
                           "ground_truth": "150"}])
FENCED = (
    "Here are the subproblems:\n```json\n"
    + json.dumps([{"statement": "What is 4 / 2?", "ground_truth": "2"},
                  {"statement": "What is 10 - 2?", "ground_truth": "8"},
                  {"statement": "What is 10 - 4 / 2?", "ground_truth": "8"}],
                 indent=1)
    + "\n```\nEach builds on the previous one."
)
CANNED = {"a": VALID, "b": BROKEN, "c": WRONG_COUNT, "d": FENCED}


def _write_jsonl(path, rows):
  with open(path, "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")


def _read_jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _record_id(message):
  """The id of the record a request message asks about."""
  return next(r["id"] for r in RECORDS if r["problem"] in message)


class FakeBackend:
  """Canned replies by record id; remembers what it was asked."""

  def __init__(self, replies):
    self.replies = replies
    self.asked = []

  def __call__(self, messages):
    ids = [_record_id(m) for m in messages]
    self.asked += ids
    return [self.replies[rid] for rid in ids]


# ---------------------------------------------------------------------------
# Reply validation.


def test_valid_reply_forces_subproblem_k():
  chain = llm_subproblems.parse_reply(
      VALID, record=RECORDS[0], k=3, parses=llm_subproblems.number_parses)
  assert chain == [
      {"statement": "Ann has 3 bags of 4 apples. How many apples?",
       "ground_truth": "12"},
      {"statement": "12 apples, 2 eaten. How many left?", "ground_truth": "10"},
      {"statement": RECORDS[0]["problem"], "ground_truth": "10"},
  ]


@pytest.mark.parametrize("reply,reason", [
    (BROKEN, "no_json_array"),
    ("No JSON here, sorry.", "no_json_array"),
    ('["12", "10", "21"]', "no_json_array"),  # an array, but not of objects
    (WRONG_COUNT, "wrong_count"),
    (json.dumps([{"statement": "", "ground_truth": "1"}, {}, {}]), "bad_item"),
    (json.dumps([{"statement": "s", "ground_truth": True}, {}, {}]),
     "bad_item"),
    (json.dumps([{"statement": "s", "ground_truth": "1"},
                 {"statement": "t"}, {}]), "bad_item"),
    (json.dumps([{"statement": "s", "ground_truth": "1"},
                 {"statement": "t", "ground_truth": "about ten"}, {}]),
     "unparsable_ground_truth"),
])
def test_rejected_replies(reply, reason):
  with pytest.raises(llm_subproblems.RejectedReply) as e:
    llm_subproblems.parse_reply(reply, record=RECORDS[0], k=3,
                                parses=llm_subproblems.number_parses)
  assert e.value.reason == reason
  assert reason in llm_subproblems.REJECTIONS


def test_fenced_reply_and_arrays_inside_text():
  chain = llm_subproblems.parse_reply(
      FENCED, record=RECORDS[3], k=3, parses=llm_subproblems.number_parses)
  assert [s["ground_truth"] for s in chain] == ["2", "8", "8"]
  # An array of numbers before the real one is skipped; numbers are written
  # as JSON writes them (0.5, not .5 or 1/2); item K is not validated.
  reply = ("Using [1, 2]: " + json.dumps(
      [{"statement": "Half of 1?", "ground_truth": 0.5},
       {"statement": "?", "ground_truth": None}]))
  chain = llm_subproblems.parse_reply(
      reply, record=RECORDS[1], k=2, parses=llm_subproblems.number_parses)
  assert chain == [{"statement": "Half of 1?", "ground_truth": "0.5"},
                   {"statement": RECORDS[1]["problem"], "ground_truth": "21"}]


def test_request_message_gives_problem_answer_and_reference():
  message = llm_subproblems.request_message(RECORDS[0], k=3)
  assert RECORDS[0]["problem"] in message
  assert "Answer: 10" in message
  assert "Reference solution:\n3*4 = 12; 12 - 2 = 10" in message
  assert "exactly 3 objects" in message
  assert "Reference solution" not in llm_subproblems.request_message(
      RECORDS[1], k=3)
  with pytest.raises(ValueError, match="k=1"):
    llm_subproblems.request_message(RECORDS[1], k=1)


def test_math_verify_parses_in_the_pool():
  with math_checker.MathChecker(
      num_workers=1, timeout_s=30.0,
      warmup=llm_subproblems.math_verify_warmup()) as pool:
    parses = llm_subproblems.math_verify_parses(pool)
    assert parses(["3", "\\frac{1}{2}", "x^2 + 1", "(1, 2]", "???", ""]) == [
        True, True, True, True, False, False]


# ---------------------------------------------------------------------------
# The resumable loop.


def test_fake_backend_keeps_drops_counts_and_resumes(tmp_path):
  input_path, output = str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl")
  _write_jsonl(input_path, RECORDS + [{"id": "a2", **{
      k: v for k, v in RECORDS[0].items() if k != "id"}}, "not an object"])
  backend = FakeBackend(CANNED)
  summary = llm_subproblems.run_file(
      input_path=input_path, output=output, columns="", k=3, backend=backend,
      parses=llm_subproblems.number_parses, batch_size=3)
  assert backend.asked == ["a", "b", "c", "d"]  # "a2" repeats a's problem
  assert summary == {
      "kept": 2, "dropped": {"no_json_array": 1, "wrong_count": 1},
      "retry_later": {}, "already_done": 0, "duplicates": 1, "total_kept": 2,
      "total_dropped": {"no_json_array": 1, "wrong_count": 1},
      "malformed_input_rows": 1,
  }
  dropped_path, summary_path = llm_subproblems.companion_paths(output)
  assert dropped_path == str(tmp_path / "out.dropped.jsonl")
  with open(summary_path) as f:
    assert json.load(f) == summary
  kept = _read_jsonl(output)
  assert [r["id"] for r in kept] == ["a", "d"]
  assert kept[0]["subproblems"][-1] == {"statement": RECORDS[0]["problem"],
                                        "ground_truth": "10"}
  assert kept[0]["reference_solution"] == "3*4 = 12; 12 - 2 = 10"
  assert kept[1]["reference_solution"] is None
  dropped = _read_jsonl(dropped_path)
  assert [(r["id"], r["reason"], r["reply"]) for r in dropped] == [
      ("b", "no_json_array", BROKEN), ("c", "wrong_count", WRONG_COUNT)]

  # Resume: nothing is asked again.
  again = FakeBackend(CANNED)
  summary = llm_subproblems.run_file(
      input_path=input_path, output=output, columns="", k=3, backend=again,
      parses=llm_subproblems.number_parses, batch_size=3)
  assert again.asked == []
  assert summary["already_done"] == 5 and summary["kept"] == 0
  assert summary["total_kept"] == 2 and len(_read_jsonl(output)) == 2


def test_crash_mid_run_loses_nothing(tmp_path):
  output = str(tmp_path / "out.jsonl")
  calls = []

  def crashing(messages):
    calls.append(len(messages))
    if len(calls) == 2:
      raise KeyboardInterrupt  # killed during the second batch
    return FakeBackend(CANNED)(messages)

  with pytest.raises(KeyboardInterrupt):
    llm_subproblems.build_chains(
        RECORDS, backend=crashing, k=3, parses=llm_subproblems.number_parses,
        output=output, batch_size=2)
  # Batch 1 (a kept, b dropped) is on disk; a torn line of d's is cut off.
  with open(output, "a") as f:
    f.write('{"id": "d", "problem": "What is 10')
  backend = FakeBackend(CANNED)
  summary = llm_subproblems.build_chains(
      RECORDS, backend=backend, k=3, parses=llm_subproblems.number_parses,
      output=output, batch_size=2)
  assert backend.asked == ["c", "d"]
  assert summary.already_done == 2 and summary.kept == 1
  assert [r["id"] for r in _read_jsonl(output)] == ["a", "d"]
  assert summary.total_dropped == {"no_json_array": 1, "wrong_count": 1}


def test_failures_retry_later_or_drop(tmp_path):
  output = str(tmp_path / "out.jsonl")
  failures = {
      "a": llm_subproblems.Failure("backend_error", "HTTP 503", True),
      "b": llm_subproblems.Failure("prompt_too_long", "5000 tokens", False),
  }
  summary = llm_subproblems.build_chains(
      RECORDS[:2], backend=FakeBackend({**CANNED, **failures}), k=3,
      parses=llm_subproblems.number_parses, output=output, batch_size=4)
  assert summary.kept == 0
  assert summary.retry_later == {"backend_error": 1}
  assert summary.dropped == {"prompt_too_long": 1}
  # a was written nowhere, so the next run asks for it again.
  backend = FakeBackend(CANNED)
  summary = llm_subproblems.build_chains(
      RECORDS[:2], backend=backend, k=3, parses=llm_subproblems.number_parses,
      output=output, batch_size=4)
  assert backend.asked == ["a"] and summary.kept == 1


def test_output_is_read_by_the_trainer_files(tmp_path):
  """files.load_records (preset 'default') keeps `subproblems`."""
  output = str(tmp_path / "out.jsonl")
  llm_subproblems.build_chains(
      RECORDS, backend=FakeBackend(CANNED), k=3,
      parses=llm_subproblems.number_parses, output=output, batch_size=4)
  loaded = files.load_records(output, columns="default")
  assert [r["id"] for r in loaded.records] == ["a", "d"]
  written = _read_jsonl(output)
  for record, row in zip(loaded.records, written):
    assert record["subproblems"] == row["subproblems"]
    assert len(record["subproblems"]) == 3
  assert loaded.records[0]["reference_solution"] == "3*4 = 12; 12 - 2 = 10"
  assert "reference_solution" not in loaded.records[1]  # null is absent
  assert "Problem3: " + RECORDS[0]["problem"] in (
      scrl_prompts.curriculum_message(loaded.records[0]))

  bad = str(tmp_path / "bad.jsonl")
  _write_jsonl(bad, [
      {"problem": "p", "answer": "1", "subproblems": []},
      {"problem": "p", "answer": "1", "subproblems": [{"statement": "s"}]},
      {"problem": "p", "answer": "1", "subproblems": ["s"]},
      {"problem": "p", "answer": "1",
       "subproblems": [{"statement": "s", "ground_truth": 3}]},
  ])
  loaded = files.load_records(bad, columns="")
  assert loaded.skipped == [
      (1, "subproblems is not a non-empty list"),
      (2, "subproblems[0].ground_truth is a NoneType, not text"),
      (3, "subproblems[0] is a str, not an object"),
  ]
  assert loaded.records[0]["subproblems"] == [
      {"statement": "s", "ground_truth": "3"}]


# ---------------------------------------------------------------------------
# Backends.


def test_local_model_end_to_end(tmp_path):
  """random:tiny through our sampler: garbage replies are dropped and counted;
  a prompt longer than max_prompt_len is dropped without sampling."""
  input_path, output = str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl")
  long_record = {"id": "long", "problem": "How many? " * 300, "answer": "1"}
  _write_jsonl(input_path, RECORDS[:2] + [long_record])
  backend = llm_subproblems.LocalBackend(
      "random:tiny", max_new_tokens=8, temperature=1.0, max_prompt_len=384)
  summary = llm_subproblems.run_file(
      input_path=input_path, output=output, columns="", k=3, backend=backend,
      parses=llm_subproblems.number_parses, batch_size=3)
  dropped = _read_jsonl(llm_subproblems.companion_paths(output)[0])
  assert summary["kept"] == 0 and len(dropped) == 3
  by_id = {r["id"]: r for r in dropped}
  assert by_id["long"]["reason"] == "prompt_too_long"
  assert by_id["long"]["reply"] is None
  for rid in ("a", "b"):  # 8 random tokens are no JSON array of 3 objects
    assert by_id[rid]["reason"] in ("no_json_array", "wrong_count")
    assert isinstance(by_id[rid]["reply"], str)
  assert sum(summary["dropped"].values()) == 3


class _Server(http.server.ThreadingHTTPServer):
  """A fake OpenAI-compatible endpoint: canned replies by problem."""

  def __init__(self, statuses):
    super().__init__(("127.0.0.1", 0), _Handler)
    self.statuses = statuses  # record id -> list of HTTP statuses to send
    self.requests = []


class _Handler(http.server.BaseHTTPRequestHandler):

  def do_POST(self):  # pylint: disable=invalid-name
    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
    message = body["messages"][0]["content"]
    rid = _record_id(message)
    self.server.requests.append((self.path, self.headers.get("Authorization"),
                                 body, rid))
    statuses = self.server.statuses.get(rid, [])
    status = statuses.pop(0) if statuses else 200
    payload = {"error": {"message": "no"}} if status != 200 else {
        "object": "chat.completion",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": CANNED[rid]}}]}
    data = json.dumps(payload).encode()
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def log_message(self, *args):
    del args


@pytest.fixture
def server():
  def start(statuses):
    s = _Server(statuses)
    threading.Thread(target=s.serve_forever, daemon=True).start()
    servers.append(s)
    return s, f"http://127.0.0.1:{s.server_address[1]}/v1"
  servers = []
  yield start
  for s in servers:
    s.shutdown()
    s.server_close()


def test_openai_binary_against_local_server(server, tmp_path):
  """`python -m experiments.make_subproblems --backend=openai` end to end."""
  srv, url = server({})
  input_path, output = str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl")
  _write_jsonl(input_path, RECORDS)
  result = subprocess.run(
      [sys.executable, "-m", "experiments.make_subproblems",
       f"--input={input_path}", f"--output={output}", "--backend=openai",
       f"--url={url}", "--model_name=test-model", "--api_key_env=SCRL_KEY",
       "--k=3", "--batch_size=2", "--temperature=0.5", "--max_new_tokens=64",
       "--checker=number"],
      cwd=_ROOT,
      env={**os.environ, "SCRL_KEY": "secret", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": ""},
      capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary["kept"] == 2
  assert summary["dropped"] == {"no_json_array": 1, "wrong_count": 1}
  assert [r["id"] for r in _read_jsonl(output)] == ["a", "d"]
  assert sorted(rid for *_, rid in srv.requests) == ["a", "b", "c", "d"]
  for path, auth, body, _ in srv.requests:
    assert path == "/v1/chat/completions" and auth == "Bearer secret"
    assert body["model"] == "test-model" and body["temperature"] == 0.5
    assert body["max_tokens"] == 64 and body["messages"][0]["role"] == "user"


def test_openai_backend_retries_rejects_and_refuses(server):
  # a: a 503 then a 500, then the reply; b: 400 (this request is refused);
  # c: 429 every time (retryable, left for the next run).
  srv, url = server({"a": [503, 500], "b": [400], "c": [429] * 9})
  backend = llm_subproblems.OpenAIBackend(
      url=url + "/chat/completions", model_name="m", api_key=None,
      max_new_tokens=16, temperature=0.0, retries=2, backoff_s=0.0)
  messages = [llm_subproblems.request_message(r, k=3) for r in RECORDS[:3]]
  a, b, c = backend(messages)
  assert a == VALID
  assert b.reason == "request_rejected" and not b.retry
  assert c.reason == "backend_error" and c.retry and "HTTP 429" in c.detail
  counts = {rid: sum(r[3] == rid for r in srv.requests) for rid in "abc"}
  assert counts == {"a": 3, "b": 1, "c": 3}  # 1 try + 2 retries at most
  assert all(r[1] is None for r in srv.requests)  # no key, no header

  _, url = server({"a": [401]})
  backend = llm_subproblems.OpenAIBackend(
      url=url, model_name="m", api_key="k", max_new_tokens=16,
      temperature=0.0, backoff_s=0.0)
  with pytest.raises(ValueError, match="HTTP 401"):
    backend(messages[:1])
