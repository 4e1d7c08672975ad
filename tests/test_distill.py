"""Tests for on-policy distillation (METHODS.md 7): rlvr_jax.algorithms.distill
and the feedback-conditioned teacher inputs of rlvr_jax.data.feedback."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax.algorithms import distill
from rlvr_jax.data import feedback
from rlvr_jax.data import prompts
from rlvr_jax.models import loader
from rlvr_jax.models import tokenizer as tokenizer_lib

LN = math.log


def _np_log_softmax(z: np.ndarray) -> np.ndarray:
  z = z - z.max(axis=-1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _np_topk_target(teacher_logits: np.ndarray, k: int) -> np.ndarray:
  """NumPy q[B, T, V]: teacher probs on its top k, renormalized; 0 elsewhere."""
  q = np.zeros_like(teacher_logits, dtype=np.float64)
  probs = np.exp(_np_log_softmax(teacher_logits.astype(np.float64)))
  top = np.argsort(-teacher_logits, axis=-1, kind="stable")[..., :k]
  kept = np.take_along_axis(probs, top, axis=-1)
  np.put_along_axis(q, top, kept / kept.sum(axis=-1, keepdims=True), axis=-1)
  return q


# ---------------------------------------------------------------------------
# OPD (7.1).
# ---------------------------------------------------------------------------


@pytest.mark.usefixtures("strict_rank")
def test_opd_advantages_hand_values():
  # Row 0: teacher p = 1/2, student p = 1/4 -> log 2; teacher 1/8, student 1/2
  # -> log(1/4) = -2 log 2; third token masked (garbage 7 and -7).
  teacher = jnp.log(jnp.array([[0.5, 0.125, 7.0]]))
  student = jnp.log(jnp.array([[0.25, 0.5, 1e-7]]))
  mask = jnp.array([[1.0, 1.0, 0.0]])
  adv = distill.opd_advantages(teacher, student, mask)
  np.testing.assert_allclose(adv, [[LN(2), -2 * LN(2), 0.0]], rtol=1e-6)
  # With an outcome advantage of 1 on every token and weights (0.5, 2):
  # 0.5 * log 2 + 2, 0.5 * (-2 log 2) + 2 = 2 - log 2, masked 0.
  adv = distill.opd_advantages(
      teacher, student, mask, outcome_advantages=jnp.ones((1, 3)),
      opd_coef=0.5, outcome_coef=2.0)
  np.testing.assert_allclose(
      adv, [[0.5 * LN(2) + 2, 2 - LN(2), 0.0]], rtol=1e-6)


@pytest.mark.usefixtures("strict_rank")
def test_opd_advantages_match_numpy_log_ratio():
  rng = np.random.default_rng(0)
  B, T = 6, 9
  teacher = -rng.exponential(size=(B, T)).astype(np.float32)
  student = -rng.exponential(size=(B, T)).astype(np.float32)
  outcome = rng.normal(size=(B, T)).astype(np.float32)
  mask = (rng.random((B, T)) < 0.7).astype(np.float32)
  expected = mask * (0.7 * (teacher - student) + 0.3 * outcome)
  adv = distill.opd_advantages(
      jnp.asarray(teacher), jnp.asarray(student), jnp.asarray(mask),
      outcome_advantages=jnp.asarray(outcome), opd_coef=0.7, outcome_coef=0.3)
  np.testing.assert_allclose(adv, expected, rtol=1e-5, atol=1e-6)
  # The advantage is a constant of the loss: no gradient reaches the inputs.
  grad = jax.grad(lambda s: jnp.sum(distill.opd_advantages(
      jnp.asarray(teacher), s, jnp.asarray(mask))))(jnp.asarray(student))
  np.testing.assert_array_equal(grad, np.zeros((B, T)))


def test_opd_advantages_bad_input():
  x = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match="outcome_advantages"):
    distill.opd_advantages(x, x, x, outcome_coef=1.0)
  with pytest.raises(ValueError, match="student_logp"):
    distill.opd_advantages(x, jnp.zeros((2, 4)), x)


# ---------------------------------------------------------------------------
# Horizons (7.2).
# ---------------------------------------------------------------------------


def test_topd_horizon_by_hand():
  assert distill.topd_horizon(256, rho=0.1) == 26  # 25.6 rounded up
  assert distill.topd_horizon(10, rho=0.3) == 3  # 3.0000000000000004 -> 3
  assert distill.topd_horizon(5, rho=0.01) == 1  # 0.05 -> 1
  assert distill.topd_horizon(256, rho=1.0) == 256
  assert distill.topd_horizon(7, rho=0.5) == 4  # 3.5 -> 4
  with pytest.raises(ValueError, match="--config.distill.rho"):
    distill.topd_horizon(10, rho=0.0)


def test_popd_horizon_by_hand():
  # T = 100, H_0 = 10, dH = 20, dk = 3: H_k = min(100, 10 + 20 * (k // 3)).
  expected = {0: 10, 2: 10, 3: 30, 5: 30, 8: 50, 13: 90, 14: 90, 15: 100,
              1000: 100}
  for k, h in expected.items():
    assert distill.popd_horizon(k, 100, h0=10, dh=20, dk=3) == h, k
    assert distill.horizon(k, schedule="popd", max_response_len=100, h0=10,
                           dh=20, dk=3) == h, k
  assert distill.popd_horizon(7, 100, h0=10, dh=0, dk=1) == 10
  assert distill.popd_horizon(0, 8, h0=50, dh=1, dk=1) == 8
  with pytest.raises(ValueError, match="--config.distill.popd_dk"):
    distill.popd_horizon(0, 100, h0=10, dh=20, dk=0)
  with pytest.raises(ValueError, match="--config.distill.popd_h0"):
    distill.popd_horizon(0, 100, h0=0, dh=20, dk=1)


def test_horizon_schedules():
  assert distill.horizon(5, schedule="full", max_response_len=256) == 256
  assert distill.horizon(5, schedule="topd", max_response_len=256,
                         rho=0.1) == 26
  with pytest.raises(ValueError, match="--config.distill.horizon.*popd"):
    distill.horizon(0, schedule="short", max_response_len=256)


# ---------------------------------------------------------------------------
# DistIL top-k forward cross-entropy (7.3).
# ---------------------------------------------------------------------------


@pytest.mark.usefixtures("strict_rank")
def test_topk_cross_entropy_hand_value_and_gradient():
  # Teacher p over V = 4 proportional to (3, 1, 0.5, 0.25); top 2 = tokens
  # {0, 1}, renormalized q = (3/4, 1/4). Student logits 0: log p_S = -log 4
  # for every token, so CE = -(3/4 + 1/4) * (-log 4) = log 4, and
  # dCE/dz_S = softmax(z_S) - q = (1/4 - 3/4, 1/4 - 1/4, 1/4, 1/4)
  #          = (-1/2, 0, 1/4, 1/4).
  teacher_logits = jnp.log(jnp.array([[[3.0, 1.0, 0.5, 0.25]]]))
  ids, probs = distill.teacher_topk(teacher_logits, k=2)
  np.testing.assert_array_equal(ids, [[[0, 1]]])
  np.testing.assert_allclose(probs, [[[0.75, 0.25]]], rtol=1e-6)
  student = jnp.zeros((1, 1, 4))
  ce = distill.topk_cross_entropy(student, ids, probs)
  np.testing.assert_allclose(ce, [[LN(4)]], rtol=1e-6)
  grad = jax.grad(lambda z: jnp.sum(
      distill.topk_cross_entropy(z, ids, probs)))(student)
  np.testing.assert_allclose(grad, [[[-0.5, 0.0, 0.25, 0.25]]], atol=1e-6)


@pytest.mark.usefixtures("strict_rank")
def test_topk_cross_entropy_and_gradient_match_numpy():
  rng = np.random.default_rng(1)
  B, T, V, k = 3, 5, 17, 4
  teacher = rng.normal(size=(B, T, V)).astype(np.float32) * 2
  student = rng.normal(size=(B, T, V)).astype(np.float32) * 2
  mask = np.ones((B, T), np.float32)
  mask[0, 3:] = 0.0
  mask[2, 1:] = 0.0
  q = _np_topk_target(teacher, k)
  log_ps = _np_log_softmax(student.astype(np.float64))
  ce_np = -(q * log_ps).sum(axis=-1)
  den = mask.sum()
  # d/dz of sum_{i,t} m CE / sum m = m * (softmax(z) - q) / sum m.
  grad_np = mask[..., None] * (np.exp(log_ps) - q) / den

  ids, probs = distill.teacher_topk(jnp.asarray(teacher), k=k)
  ce = distill.topk_cross_entropy(jnp.asarray(student), ids, probs)
  np.testing.assert_allclose(ce, ce_np, rtol=1e-5)

  def loss(z):
    num, d = distill.distil_loss_pair(
        distill.topk_cross_entropy(z, ids, probs), jnp.asarray(mask))
    return num / d

  value, grad = jax.value_and_grad(loss)(jnp.asarray(student))
  np.testing.assert_allclose(value, (mask * ce_np).sum() / den, rtol=1e-5)
  np.testing.assert_allclose(grad, grad_np, atol=1e-6)
  # The teacher is a target: no gradient reaches its logits.
  teacher_grad = jax.grad(lambda t: jnp.sum(distill.topk_cross_entropy(
      jnp.asarray(student), *distill.teacher_topk(t, k=k))))(
          jnp.asarray(teacher))
  np.testing.assert_array_equal(teacher_grad, np.zeros_like(teacher))


@pytest.mark.usefixtures("strict_rank")
def test_chunked_cross_entropy_matches_numpy_value_and_head_gradient():
  # Student logits from a linear head z = h W; T = 5 in chunks of 2 (padded).
  rng = np.random.default_rng(2)
  B, T, D, V, k = 2, 5, 3, 11, 3
  hidden = rng.normal(size=(B, T, D)).astype(np.float32)
  weight = rng.normal(size=(D, V)).astype(np.float32)
  teacher_weight = rng.normal(size=(D, V)).astype(np.float32)
  teacher = hidden @ teacher_weight
  mask = np.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], np.float32)
  ids, probs = distill.teacher_topk(jnp.asarray(teacher), k=k)

  def loss(w, chunk_size):
    ce = distill.map_token_chunks(
        lambda h, i, p: distill.topk_cross_entropy(h @ w, i, p),
        jnp.asarray(hidden), ids, probs, chunk_size=chunk_size)
    num, den = distill.distil_loss_pair(ce, jnp.asarray(mask))
    return num / den, ce

  q = _np_topk_target(teacher, k)
  logits = hidden.astype(np.float64) @ weight.astype(np.float64)
  log_ps = _np_log_softmax(logits)
  ce_np = -(q * log_ps).sum(axis=-1)
  # dL/dW = sum_{i,t} h[i,t] (m (softmax - q) / sum m)[i,t] as an outer product.
  dz = mask[..., None] * (np.exp(log_ps) - q) / mask.sum()
  grad_np = np.einsum("btd,btv->dv", hidden, dz)
  for chunk_size in (None, 2):
    # The statistics pass's chunked teacher top k: the same ids and probs.
    chunk_ids, chunk_probs = distill.map_token_chunks(
        lambda h: distill.teacher_topk(h @ jnp.asarray(teacher_weight), k=k),
        jnp.asarray(hidden), chunk_size=chunk_size)
    np.testing.assert_array_equal(chunk_ids, ids)
    np.testing.assert_allclose(chunk_probs, probs, rtol=1e-6)
    (value, ce), grad = jax.value_and_grad(loss, has_aux=True)(
        jnp.asarray(weight), chunk_size)
    np.testing.assert_allclose(ce, ce_np, rtol=1e-5)
    np.testing.assert_allclose(value, (mask * ce_np).sum() / mask.sum(),
                               rtol=1e-5)
    np.testing.assert_allclose(grad, grad_np, rtol=1e-4, atol=1e-6)


def test_topk_bad_input():
  with pytest.raises(ValueError, match="--config.distill.topk"):
    distill.teacher_topk(jnp.zeros((1, 2, 4)), k=5)
  with pytest.raises(ValueError, match="teacher_logits"):
    distill.teacher_topk(jnp.zeros((2, 4)), k=1)
  with pytest.raises(ValueError, match="student_logits"):
    distill.topk_cross_entropy(jnp.zeros((1, 3, 4)), jnp.zeros((1, 2, 2), int),
                               jnp.zeros((1, 2, 2)))


# ---------------------------------------------------------------------------
# DistIL future credit (7.3).
# ---------------------------------------------------------------------------


@pytest.mark.usefixtures("strict_rank")
def test_future_credit_by_hand_2x5():
  # One group of G = 2 rows. Row 1 ends after 3 tokens (100 = masked garbage).
  #   row 0: CE = 1 2 3 4 5 -> R = -(later CE) = -14 -12 -9 -5  0
  #   row 1: CE = 2 1 1 . . -> R =               -2  -1  0  .  .
  # Baseline over the rows valid at t: t0 (-14-2)/2 = -8, t1 (-12-1)/2 =
  # -6.5, t2 (-9+0)/2 = -4.5, t3 row 0 only: -5, t4 row 0 only: 0.
  #   row 0: A = -14+8, -12+6.5, -9+4.5, -5+5, 0-0 = -6 -5.5 -4.5 0 0
  #   row 1: A =  -2+8,  -1+6.5,  0+4.5, 0 (masked) = 6 5.5 4.5 0 0
  ce = jnp.array([[1.0, 2, 3, 4, 5], [2, 1, 1, 100, 100]])
  mask = jnp.array([[1.0, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
  adv = distill.future_credit_advantages(ce, mask, group_size=2)
  np.testing.assert_allclose(
      adv, [[-6, -5.5, -4.5, 0, 0], [6, 5.5, 4.5, 0, 0]], atol=1e-6)
  # G = 1: each position has one valid row, so the baseline is the row itself.
  np.testing.assert_array_equal(
      distill.future_credit_advantages(ce, mask, group_size=1),
      np.zeros((2, 5)))


@pytest.mark.usefixtures("strict_rank")
def test_future_credit_matches_numpy():
  rng = np.random.default_rng(3)
  B, T, G = 6, 7, 3
  ce = rng.exponential(size=(B, T)).astype(np.float32)
  lengths = rng.integers(1, T + 1, size=B)
  mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float32)
  raw = np.zeros((B, T))
  for i in range(B):
    for t in range(T):
      raw[i, t] = -sum(ce[i, u] * mask[i, u] for u in range(t + 1, T))
  expected = np.zeros((B, T))
  for g in range(B // G):
    rows = range(g * G, (g + 1) * G)
    for t in range(T):
      valid = [i for i in rows if mask[i, t]]
      for i in valid:
        expected[i, t] = raw[i, t] - np.mean([raw[j, t] for j in valid])
  adv = distill.future_credit_advantages(
      jnp.asarray(ce), jnp.asarray(mask), group_size=G)
  np.testing.assert_allclose(adv, expected, rtol=1e-5, atol=1e-5)


def test_future_credit_bad_group_size():
  with pytest.raises(ValueError, match="group_size"):
    distill.future_credit_advantages(jnp.zeros((4, 3)), jnp.ones((4, 3)),
                                     group_size=3)


# ---------------------------------------------------------------------------
# Feedback-conditioned teacher inputs (7.3).
# ---------------------------------------------------------------------------

RECORD = {"problem": "What is 12 + 30?", "answer": "42", "metadata": {}}


def test_render_feedback_templates():
  assert feedback.render_feedback(
      RECORD, correct=False, template="verdict_answer") == (
          "Feedback on a previous attempt: its final answer was incorrect. "
          "The reference answer is 42.")
  solution = {**RECORD, "answer": "12 + 30 = 42, so \\boxed{42}"}
  assert feedback.render_feedback(
      solution, correct=True, template="answer") == (
          "The reference answer is 42.")
  with pytest.raises(ValueError, match="--config.distill.feedback_template"):
    feedback.render_feedback(RECORD, correct=True, template="nope")


def test_plain_teacher_prompt_puts_feedback_before_answer():
  text = feedback.render_teacher_prompt(
      RECORD, correct=True, feedback_template="verdict_answer",
      template="plain", instruction=prompts.BOXED_INSTRUCTION)
  assert text == (
      "Question: What is 12 + 30?\nPut your final answer within \\boxed{}."
      "\n\nFeedback on a previous attempt: its final answer was correct. "
      "The reference answer is 42.\nAnswer:")


@pytest.fixture(scope="module")
def smollm2_tokenizer():
  return tokenizer_lib.load_tokenizer(loader.default_gguf_path())


def test_teacher_batch_aligns_with_student_on_smollm2(smollm2_tokenizer):
  tok = smollm2_tokenizer
  pad_id = tok.pad_token_id
  render = dict(template="chat", instruction=prompts.BOXED_INSTRUCTION,
                tokenizer=tok)
  student_ids = tok.encode(prompts.render_prompt(RECORD, **render),
                           add_special_tokens=False)
  responses = ["12 + 30 = 41.\nThe final answer is \\boxed{41}.<|im_end|>",
               "\\boxed{42}<|im_end|>"]
  correct = [False, True]
  response_ids = [tok.encode(r, add_special_tokens=False) for r in responses]
  # Student batch: the prompt left-padded to P = len + 3, responses
  # right-padded to T = longest + 2.
  P = len(student_ids) + 3
  T = max(map(len, response_ids)) + 2
  tokens = np.full((2, P + T), pad_id, np.int32)
  mask = np.zeros((2, P + T), bool)
  for i, ids in enumerate(response_ids):
    tokens[i, P - len(student_ids):P] = student_ids
    mask[i, P - len(student_ids):P] = True
    tokens[i, P:P + len(ids)] = ids
    mask[i, P:P + len(ids)] = True

  teacher_texts = [feedback.render_teacher_prompt(
      RECORD, correct=c, feedback_template="verdict_answer", **render)
                   for c in correct]
  teacher_ids = [tok.encode(t, add_special_tokens=False)
                 for t in teacher_texts]
  batch = feedback.build_teacher_batch(
      teacher_ids, tokens, mask, prompt_len=P, pad_id=pad_id,
      max_prompt_len=512, bucket=8)
  start = batch.response_start
  assert start % 8 == 0 and start >= max(map(len, teacher_ids))
  assert batch.tokens.shape == (2, start + T)

  header = tok.encode("<|im_end|>\n<|im_start|>assistant\n",
                      add_special_tokens=False)
  teacher_positions = np.cumsum(batch.input_mask, axis=1) - 1
  student_positions = np.cumsum(mask, axis=1) - 1
  for i in range(2):
    # The feedback is inside the user turn, before the assistant header.
    verdict = "incorrect" if not correct[i] else "correct"
    prompt = batch.tokens[i, batch.input_mask[i]][:len(teacher_ids[i])]
    assert tok.decode(prompt, skip_special_tokens=False) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
        "trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 12 + "
        "30?\nPut your final answer within \\boxed{}.\n\nFeedback on a "
        f"previous attempt: its final answer was {verdict}. The reference "
        "answer is 42.<|im_end|>\n<|im_start|>assistant\n")
    # Left padding, then the prompt; the last prompt tokens are the same
    # assistant header as the student's.
    n = len(teacher_ids[i])
    assert not batch.input_mask[i, :start - n].any()
    assert (batch.tokens[i, :start - n] == pad_id).all()
    assert batch.tokens[i, start - len(header):start].tolist() == header
    assert tokens[i, P - len(header):P].tolist() == header
    # Token by token: response token t at teacher index start + t and student
    # index P + t, the same id and mask; positions shift by the prompt lengths.
    for t in range(T):
      assert batch.tokens[i, start + t] == tokens[i, P + t], (i, t)
      assert batch.input_mask[i, start + t] == mask[i, P + t], (i, t)
      if mask[i, P + t]:
        assert teacher_positions[i, start + t] == n + t
        assert student_positions[i, P + t] == len(student_ids) + t
    # The logits that predict token t sit at start - 1 + t: the token there is
    # the one before it (the header's last token for t = 0).
    assert batch.tokens[i, start - 1] == tokens[i, P - 1] == header[-1]
    assert tok.decode(batch.tokens[i, start:start + len(response_ids[i])],
                      skip_special_tokens=False) == responses[i]


def test_build_teacher_batch_bad_input():
  tokens = np.zeros((2, 6), np.int32)
  mask = np.ones((2, 6), bool)
  with pytest.raises(ValueError,
                     match="--config.distill.max_teacher_prompt_len=3"):
    feedback.build_teacher_batch([[1, 2, 3, 4], [1]], tokens, mask,
                                 prompt_len=2, pad_id=0, max_prompt_len=3)
  with pytest.raises(ValueError, match="teacher_prompt_ids has 1 rows"):
    feedback.build_teacher_batch([[1]], tokens, mask, prompt_len=2, pad_id=0,
                                 max_prompt_len=3)
