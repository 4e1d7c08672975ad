"""Multi-turn episodes (rlvr_jax.envs.multiturn).

The reference is written here: each episode played alone, every model token
chosen by argmax over the decoder's full forward of the whole history (no
cache), the environment's answers appended as tokens. A tiny random model
with a character tokenizer (one character = one token) and a scripted toy
environment whose answers depend on the model's text.
"""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlvr_jax.envs import base
from rlvr_jax.envs import reasoning_gym_env
from rlvr_jax.envs import tools
from rlvr_jax.models import decoder
from rlvr_jax.models import loader
from rlvr_jax.models import logprobs
from rlvr_jax.models import tokenizer as tokenizer_lib
from rlvr_jax.models.config import tiny
from rlvr_jax.envs import multiturn

V = 64
P, T, M = 12, 40, 6  # prompt width, episode width, tokens per model turn
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 ABCDEFGHIJKLMNOPQRSTUVWXY"  # ids 3 ..
PAD = 2
CHAT = multiturn.ChatTurns(prompt_prefix="S", prompt_suffix="A", end_of_turn="E",
                           user_prefix="U", user_suffix="A")


class CharTokenizer:
  """Token 3 + i is the character _CHARS[i]; ids 0, 1, 2 are special (no text)."""

  eos_token_id = PAD

  def encode(self, text, add_special_tokens=False):
    del add_special_tokens
    return [3 + _CHARS.index(ch) for ch in text]

  def decode(self, ids, skip_special_tokens=True):
    del skip_special_tokens
    return "".join(_CHARS[i - 3] for i in ids if i >= 3)


class EchoEnv(base.Environment):
  """Answers with the turn's length and its first characters; success iff the
  last turn's length is even. Observation lengths differ between turns and
  seeds, so rows' blocks of environment tokens differ in length."""

  name = "echo"

  def __init__(self, max_turns=3):
    super().__init__(max_turns=max_turns, num_levels=2)

  def _reset(self, *, seed, level):
    self.last = ""
    return "go" + "x" * (seed % 4) + str(level)

  def _step(self, action):
    self.last = action
    return base.StepResult(f"n{len(action)} {action[:1 + self.turn]}", False)

  def _final_rewards(self):
    return {base.SUCCESS: float(len(self.last) % 2 == 0), "length": float(len(self.last))}


@pytest.fixture(scope="module")
def model():
  return decoder.create_model(tiny(vocab_size=V).replace(num_layers=2), seed=0)


def full_logits_fn(model):
  graphdef, state = nnx.split(model)

  @jax.jit
  def fn(state, tokens):
    m = nnx.merge(graphdef, state)
    mask = jnp.ones(tokens.shape, bool)
    return m.logits(m(tokens, decoder.positions_from_mask(mask), mask))

  return lambda ids: np.asarray(fn(state, jnp.asarray([ids], jnp.int32)))[0, -1]


def reference_episode(full, tok, env, seed, level, *, eos, stops):
  """(prompt ids, [(ids, is_model)], rewards, truncated) by full recomputation."""
  prompt = tok.encode(CHAT.prompt(env.reset(seed=seed, level=level)))
  history, segments, used = list(prompt), [], 0
  while True:
    ids, finish = [], "length"
    for _ in range(min(M, T - used)):
      ids.append(int(np.argmax(full(history + ids))))
      if ids[-1] in eos:
        finish = "eos"
        break
      if any(tok.decode(ids[-len(s):]) == s and len(ids) >= len(s) for s in stops):
        finish = "stop"
        break
    segments.append((ids, True))
    history += ids
    used += len(ids)
    if finish == "length" and used >= T:
      return prompt, segments, env.truncate().rewards, True
    result = env.step(tok.decode(ids[:-1] if finish == "eos" else ids))
    if result.done:
      return prompt, segments, result.rewards, False
    answer = tok.encode(CHAT.env_turn(result.observation, ended_turn=finish == "eos"))
    if used + len(answer) + 1 > T:
      return prompt, segments, env.truncate().rewards, True
    segments.append((answer, False))
    history += answer
    used += len(answer)


SEEDS, LEVELS = [0, 1, 2, 3, 5], [0, 1, 1, 0, 1]
MAX_TURNS = [3, 8, 3, 8, 2]  # 8 turns do not fit in T: those episodes are cut


@pytest.fixture(scope="module")
def stops_and_eos(model):
  """An EOS id and a stop string the greedy model does produce (found by a
  first reference pass without either), so both stop paths are exercised."""
  full, tok = full_logits_fn(model), CharTokenizer()
  _, seg0, _, _ = reference_episode(full, tok, EchoEnv(), SEEDS[0], LEVELS[0], eos=(), stops=())
  _, seg1, _, _ = reference_episode(full, tok, EchoEnv(), SEEDS[1], LEVELS[1], eos=(), stops=())
  eos = seg0[0][0][2]
  stop = tok.decode(seg1[0][0][3:5])
  assert len(stop) == 2 and eos >= 3
  return (eos,), (stop,)


def test_carried_cache_equals_full_recomputation_and_teacher_forcing(model, stops_and_eos):
  eos, stops = stops_and_eos
  tok = CharTokenizer()
  sampler = multiturn.MultiTurnSampler(model, tok, CHAT, max_prompt_len=P, max_new_tokens=T,
                                       max_turn_tokens=M, stop_strings=stops,
                                       eos_token_ids=eos)
  envs = [EchoEnv(n) for n in MAX_TURNS]
  out = sampler.rollout(envs, seeds=SEEDS, levels=LEVELS, key=jax.random.key(0), greedy=True)

  full = full_logits_fn(model)
  reasons = set()
  for i, (seed, level, turns) in enumerate(zip(SEEDS, LEVELS, MAX_TURNS)):
    prompt, segments, rewards, truncated = reference_episode(
        full, tok, EchoEnv(turns), seed, level, eos=eos, stops=stops)
    ids = [x for s, _ in segments for x in s]
    model_mask = [float(is_model) for s, is_model in segments for _ in s]
    np.testing.assert_array_equal(out.tokens[i, P - len(prompt):P], prompt)
    assert not out.input_mask[i, :P - len(prompt)].any()
    np.testing.assert_array_equal(out.tokens[i, P:P + len(ids)], ids)
    np.testing.assert_array_equal(out.input_mask[i, P:], np.arange(T) < len(ids))
    np.testing.assert_array_equal(out.response_mask[i, :len(ids)], model_mask)
    assert not out.response_mask[i, len(ids):].any()
    assert out.rewards[i] == rewards and out.truncated[i] == truncated
    assert len(out.turns[i]) == sum(m for _, m in segments)
    reasons.add((truncated, len(segments)))
  # Episodes of several turns, at least one cut by the width and one not.
  assert {r[0] for r in reasons} == {True, False} and max(r[1] for r in reasons) >= 3
  assert (out.response_mask.sum(1) < np.asarray(out.input_mask[:, P:]).sum(1)).all()

  # The sampler's log-probs = teacher forcing on the final layout (greedy: T = 1).
  ref = logprobs.response_logprobs(model, jnp.asarray(out.tokens), jnp.asarray(out.input_mask),
                                   prompt_len=P, temperature=1.0)
  np.testing.assert_allclose(out.logp, np.asarray(ref.logp) * out.response_mask, atol=2e-5)
  assert (out.logp[out.response_mask == 0] == 0).all()


def test_sampled_logp_equals_teacher_forcing_at_temperature(model, stops_and_eos):
  eos, stops = stops_and_eos
  sampler = multiturn.MultiTurnSampler(model, CharTokenizer(), CHAT, max_prompt_len=P,
                                       max_new_tokens=T, max_turn_tokens=M,
                                       stop_strings=stops, eos_token_ids=eos)
  out = sampler.rollout([EchoEnv(n) for n in MAX_TURNS], seeds=SEEDS, levels=LEVELS,
                        key=jax.random.key(3), temperature=0.7)
  ref = logprobs.response_logprobs(model, jnp.asarray(out.tokens), jnp.asarray(out.input_mask),
                                   prompt_len=P, temperature=0.7)
  np.testing.assert_allclose(out.logp, np.asarray(ref.logp) * out.response_mask, atol=2e-5)
  again = sampler.rollout([EchoEnv(n) for n in MAX_TURNS], seeds=SEEDS, levels=LEVELS,
                          key=jax.random.key(3), temperature=0.7)
  np.testing.assert_array_equal(again.tokens, out.tokens)


def test_rollout_refuses_bad_arguments(model):
  sampler = multiturn.MultiTurnSampler(model, CharTokenizer(), CHAT, max_prompt_len=4,
                                       max_new_tokens=T, max_turn_tokens=M, stop_strings=())
  with pytest.raises(ValueError, match="max_prompt_len=4"):
    sampler.rollout([EchoEnv()], seeds=[0], levels=[0], key=jax.random.key(0))
  env = EchoEnv()
  with pytest.raises(ValueError, match="distinct"):
    sampler.rollout([env, env], seeds=[0, 0], levels=[0, 0], key=jax.random.key(0))
  with pytest.raises(ValueError, match="max_turn_tokens=0"):
    multiturn.MultiTurnSampler(model, CharTokenizer(), CHAT, max_prompt_len=4,
                               max_new_tokens=T, max_turn_tokens=0, stop_strings=())


def test_truncate_scores_the_state_reached():
  env = EchoEnv()
  env.reset(seed=0, level=0)
  env.step("abc")
  result = env.truncate()
  assert result.done and result.rewards == {base.SUCCESS: 0.0, "length": 3.0}
  with pytest.raises(RuntimeError, match="without a running episode"):
    env.truncate()


def test_loss_mask_is_exactly_the_models_tokens_on_a_smollm2_episode():
  """A two-turn shopping episode in SmolLM2's chat template: the first turn
  stops at the tool-call close tag (its end-of-turn token is then context),
  the second ends with <|im_end|>."""
  tok = tokenizer_lib.load_tokenizer(loader.default_gguf_path())
  chat = multiturn.ChatTurns.from_tokenizer(tok)
  obs0, obs1 = "I want 1 hat under $30.", '{"results":1,"shown":1}\n{"id":"P001"}'
  turn1 = tools.format_tool_call("search", {"category": "hat"})
  turn2 = "Done, checking out."
  prompt = tok.encode(chat.prompt(obs0), add_special_tokens=False)
  model1 = tok.encode(turn1, add_special_tokens=False)
  env1 = tok.encode(chat.env_turn(obs1, ended_turn=False), add_special_tokens=False)
  model2 = tok.encode(turn2, add_special_tokens=False) + [tok.eos_token_id]
  segments = [multiturn.Segment(tuple(model1), True, (-1.0,) * len(model1)),
              multiturn.Segment(tuple(env1), False),
              multiturn.Segment(tuple(model2), True, (-2.0,) * len(model2))]
  width = len(model1) + len(env1) + len(model2) + 5
  layout = multiturn.episode_layout([prompt], [segments], prompt_len=len(prompt) + 3,
                                    response_len=width, pad_id=tok.pad_token_id)
  p = len(prompt) + 3
  tokens, mask = layout["tokens"][0], layout["response_mask"][0]
  real = tokens[layout["input_mask"][0]]
  # The whole episode is the chat template's own rendering of the conversation.
  messages = [{"role": "user", "content": obs0}, {"role": "assistant", "content": turn1},
              {"role": "user", "content": obs1}, {"role": "assistant", "content": turn2}]
  rendered = tok.apply_chat_template(messages, tokenize=False)
  assert tok.decode(real) == rendered.rstrip("\n")
  # The loss mask covers exactly turn1's and turn2's tokens (with turn2's <|im_end|>).
  np.testing.assert_array_equal(tokens[p:][mask == 1], model1 + model2)
  assert tok.decode(tokens[p:][mask == 1]) == turn1 + turn2 + "<|im_end|>"
  context = tokens[p:p + len(model1) + len(env1) + len(model2)][mask[:-5] == 0]
  assert tok.decode(context) == "<|im_end|>\n<|im_start|>user\n" + obs1 + (
      "<|im_end|>\n<|im_start|>assistant\n")
  assert mask.sum() == len(model1) + len(model2)
  np.testing.assert_array_equal(layout["logp"][0][mask == 1],
                                [-1.0] * len(model1) + [-2.0] * len(model2))


def test_worked_examples_are_chat_turns_before_the_first_observation():
  """A chain_sum worked example rendered by ChatTurns equals the chat template's
  own rendering of the conversation, and its turn states the item's sum."""
  tok = tokenizer_lib.load_tokenizer(loader.default_gguf_path())
  env = reasoning_gym_env.ReasoningGymEnv("chain_sum", split="train")
  [(user, turn)] = env.worked_example(0)
  expression = env.generate(seed=reasoning_gym_env._MAX_SEED, level=0)["metadata"]["expression"]
  a, op, b = expression.split()
  answer = int(a) + int(b) if op == "+" else int(a) - int(b)
  assert turn == f"{expression} = {answer}.\nThe final answer is \\boxed{{{answer}}}."
  assert user.endswith("=\nPut your final answer within \\boxed{}.")
  assert env.worked_example(2) != [(user, turn)]  # (examples 0 and 1 happen to be alike)
  chat = multiturn.ChatTurns.from_tokenizer(tok, examples=[(user, turn)])
  messages = [{"role": "user", "content": user}, {"role": "assistant", "content": turn},
              {"role": "user", "content": "Calculate 1 + 1."}]
  assert chat.prompt("Calculate 1 + 1.") == tok.apply_chat_template(
      messages, tokenize=False, add_generation_prompt=True)
  # The turns after the first observation are the same as without examples.
  plain = multiturn.ChatTurns.from_tokenizer(tok)
  assert (chat.user_prefix, chat.user_suffix, chat.end_of_turn) == (
      plain.user_prefix, plain.user_suffix, plain.end_of_turn)
  with pytest.raises(NotImplementedError, match="no worked examples"):
    EchoEnv().worked_example(0)
