"""Multi-turn episodes with environments, the KV cache carried across turns.

METHODS.md section 8. An episode (`rlvr_jax.envs.base`): the environment's
first observation is the prompt (one user turn of the chat template); the
model's turn is sampled until its stop (the end-of-turn token, or the token
sequence of a stop string such as the tool-call close tag) or its token limit;
the decoded turn goes to `env.step`; the observation comes back as a user turn
of the chat template (`ChatTurns.env_turn`) and the episode continues until
the environment says done or the response width is full (then
`env.truncate()` scores the state reached).

The cache. Turns are synchronized across the B rows: every cache slot is one
(row, step) cell of a shared cursor, and a row whose turn is shorter than the
longest (or whose episode has ended) leaves its cells of that turn empty
(`valid` False): attention skips them and RoPE positions count only real
tokens (`n_real`), so each row sees exactly its own token sequence. A model
turn is a jitted while loop of one-token decode steps, each sampled token fed
back at once (the next turn attends to all of it); the environment's answer
is an "extend" prefill (`_extend`): its tokens, right-aligned in a block of
slots, go through `rlvr_jax.models.decode.forward` in one call against the
existing cache. The prompts themselves are the first extend, into an empty
cache. Nothing is ever re-prefilled. The cache grows (padding, in multiples
of 64 slots) as the cursor advances.

The output is the rollout layout of docs/CONVENTIONS.md with the empty cells
squeezed out: tokens [B, S] (prompt left-padded to P, then the episode's
model and environment tokens contiguous, right-padded to T), input_mask 1 on
every real token, response_mask 1 only on the model's tokens (environment
tokens are context: input_mask 1, response_mask 0), and logp [B, T] of the
model's tokens (0 elsewhere), which equal `response_logprobs` on this layout
(tests/test_multiturn.py), as the single-turn sampler's do.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from rlvr_jax.envs import base as env_base
from rlvr_jax.envs import tools
from rlvr_jax.models import decode as decode_lib
from rlvr_jax.models import decoder as decoder_lib
from rlvr_jax.models import logprobs as logprobs_lib
from rlvr_jax.models import tokenizer as tokenizer_lib
from rlvr_jax.sampling import sampler as sampler_lib

Array = jax.Array

TURN_FINISH = ("length", "eos", "stop")  # index = finish code of a model turn
_LENGTH, _EOS, _STOP = 0, 1, 2
_NO_TOKEN = -2  # the end-of-turn id when there is none: no token has it
_SLOT_MULTIPLE = 64  # the cache grows in multiples of this many slots
_EXTEND_MULTIPLE = 16  # environment blocks are padded to a multiple of this


@dataclasses.dataclass(frozen=True)
class ChatTurns:
  """The chat template's text around the turns of an episode.

  prompt(obs) = prompt_prefix + obs + prompt_suffix: the first user turn and
  the assistant header. env_turn(obs) = [end_of_turn] + user_prefix + obs +
  user_suffix: closes the model's turn (with the end-of-turn text when the
  model stopped on something else, e.g. a tool-call close tag), then the
  observation as a user turn and the next assistant header.

  Attributes:
    prompt_prefix: text before the first observation (system turn, user header).
    prompt_suffix: text after it (end of the user turn, assistant header).
    end_of_turn: the text of the model's end-of-turn token.
    user_prefix: text between the model's end of turn and an observation.
    user_suffix: text after an observation (up to the model's next turn).
  """

  prompt_prefix: str
  prompt_suffix: str
  end_of_turn: str
  user_prefix: str
  user_suffix: str

  def prompt(self, observation: str) -> str:
    """The episode's prompt text from the first observation."""
    return self.prompt_prefix + observation + self.prompt_suffix

  def env_turn(self, observation: str, *, ended_turn: bool) -> str:
    """The text appended after a model turn.

    Args:
      observation: the environment's answer.
      ended_turn: whether the model's turn already ends with its end-of-turn
        token (else the end-of-turn text is added first, as context).
    """
    close = "" if ended_turn else self.end_of_turn
    return close + self.user_prefix + observation + self.user_suffix

  @classmethod
  def from_tokenizer(cls, tokenizer: Any, *, system_prompt: str = "",
                     examples: Sequence[tuple[str, str]] = ()) -> ChatTurns:
    """The pieces of a tokenizer's chat template (rendered around sentinels).

    Args:
      tokenizer: an HF tokenizer with a chat template and an EOS token.
      system_prompt: '' keeps the template's default system turn.
      examples: worked examples, (user, assistant) text pairs rendered as
        turns before the first observation (in `prompt_prefix`), as
        `data.prompts.render_prompt` renders few-shot examples for 'chat'.

    Returns:
      The ChatTurns whose texts concatenate to the template's rendering of
      the conversation.

    Raises:
      ValueError: the tokenizer has no chat template, or its assistant turn
        does not end with the EOS token's text.
    """
    if not getattr(tokenizer, "chat_template", None):
      raise ValueError("the tokenizer has no chat template; multi-turn episodes need one")
    head = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for user_text, assistant_text in examples:
      head += [{"role": "user", "content": user_text},
               {"role": "assistant", "content": assistant_text}]
    user, assistant = "\x00USER\x00", "\x00ASSISTANT\x00"
    render = lambda messages: tokenizer.apply_chat_template(
        head + messages, tokenize=False, add_generation_prompt=True)
    first = render([{"role": "user", "content": user}])
    prompt_prefix, prompt_suffix = first.split(user)
    full = render([{"role": "user", "content": "x"},
                   {"role": "assistant", "content": assistant},
                   {"role": "user", "content": user}])
    after = full[full.index(assistant) + len(assistant):]
    end = tokenizer.eos_token
    if not end or not after.startswith(end):
      raise ValueError(f"the chat template's assistant turn does not end with the EOS "
                       f"token {end!r}: {after[:40]!r}")
    user_prefix, user_suffix = after[len(end):].split(user)
    return cls(prompt_prefix, prompt_suffix, end, user_prefix, user_suffix)


@dataclasses.dataclass(frozen=True)
class Segment:
  """A run of one episode's tokens from one side.

  Attributes:
    ids: the token ids.
    model: True for the model's tokens (trained), False for context.
    logp: the model's log-probs of `ids` (empty for context).
  """

  ids: tuple[int, ...]
  model: bool
  logp: tuple[float, ...] = ()


def episode_layout(prompts: Sequence[Sequence[int]], segments: Sequence[Sequence[Segment]],
                   *, prompt_len: int, response_len: int, pad_id: int
                   ) -> dict[str, np.ndarray]:
  """The rollout layout of B episodes (module docstring).

  Args:
    prompts: B prompt token lists, each at most prompt_len long.
    segments: B lists of segments, each row's total at most response_len.
    prompt_len: P.
    response_len: T.
    pad_id: the pad token.

  Returns:
    {'tokens' [B, P + T] int32, 'input_mask' [B, P + T] bool,
     'response_mask' [B, T] float32 (1 on model tokens), 'logp' [B, T]
     float32 (0 off model tokens)}.

  Raises:
    ValueError: a prompt longer than P or an episode longer than T.
  """
  b = len(prompts)
  tokens = np.full((b, prompt_len + response_len), pad_id, np.int32)
  input_mask = np.zeros((b, prompt_len + response_len), bool)
  response_mask = np.zeros((b, response_len), np.float32)
  logp = np.zeros((b, response_len), np.float32)
  for i, (prompt, row) in enumerate(zip(prompts, segments)):
    if len(prompt) > prompt_len:
      raise ValueError(f"episode {i}: prompt of {len(prompt)} tokens > prompt_len={prompt_len}")
    tokens[i, prompt_len - len(prompt):prompt_len] = prompt
    input_mask[i, prompt_len - len(prompt):prompt_len] = True
    t = 0
    for seg in row:
      n = len(seg.ids)
      if t + n > response_len:
        raise ValueError(f"episode {i}: more than response_len={response_len} tokens")
      tokens[i, prompt_len + t:prompt_len + t + n] = seg.ids
      input_mask[i, prompt_len + t:prompt_len + t + n] = True
      if seg.model:
        response_mask[i, t:t + n] = 1.0
        logp[i, t:t + n] = seg.logp
      t += n
  return {"tokens": tokens, "input_mask": input_mask, "response_mask": response_mask,
          "logp": logp}


@dataclasses.dataclass(frozen=True)
class Episodes:
  """B finished episodes in the rollout layout (host numpy).

  Attributes:
    tokens: [B, S] int32 (S = P + T).
    input_mask: [B, S] bool, every real token (prompt, model, environment).
    response_mask: [B, T] float32, 1 exactly on the model's tokens.
    logp: [B, T] float32 log-probs of the model's tokens (0 elsewhere).
    prompt_len: P.
    rewards: B dicts of the final reward channels (always 'success').
    turns: B lists of the model's decoded turns.
    observations: B lists of the environment's texts (first one included).
    truncated: [B] bool, episodes cut by the response width.
  """

  tokens: np.ndarray
  input_mask: np.ndarray
  response_mask: np.ndarray
  logp: np.ndarray
  prompt_len: int
  rewards: list[dict[str, float]]
  turns: list[list[str]]
  observations: list[list[str]]
  truncated: np.ndarray

  @property
  def num_turns(self) -> np.ndarray:
    """[B] model turns per episode."""
    return np.asarray([len(t) for t in self.turns], np.int32)


@dataclasses.dataclass(frozen=True)
class _TurnConfig:
  """Static settings of one compiled model turn."""

  steps: int
  greedy: bool
  top_k: int
  use_top_p: bool
  eos_token_ids: tuple[int, ...]
  pad_token_id: int


def _extend(graphdef: nnx.GraphDef, params: Any, rest: Any, caches: list[Any], logits: Array,
            valid: Array, n_real: Array, tokens: Array, new_mask: Array, cursor: Array
            ) -> tuple[Array, list[Any], Array, Array]:
  """Prefills a block of new tokens into the cache at slots cursor .. cursor + Tb - 1.

  Args:
    graphdef, params, rest: the split decoder.
    caches: L per-layer (keys [B, K, Dh, Sc], values [B, K, Sc, Dh]).
    logits: [B, V] float32, each row's next-token logits so far.
    valid: [B, Sc] bool, the real (non-empty) cache slots.
    n_real: [B] int32 real tokens so far (the next RoPE position).
    tokens: [B, Tb] int32, each row's new tokens right-aligned (Tb >= 1).
    new_mask: [B, Tb] bool, the real ones.
    cursor: the first slot of the block.

  Returns:
    (logits [B, V] after each row's last new token (unchanged for rows
    without new tokens), caches, valid, n_real).
  """
  model = nnx.merge(graphdef, params, rest)
  layers, head = decode_lib.decode_weights(model)
  e = tokens.shape[1]
  slots = valid.shape[1]
  positions = jnp.maximum(n_real[:, None] + jnp.cumsum(new_mask, axis=1, dtype=jnp.int32) - 1, 0)
  valid = jax.lax.dynamic_update_slice_in_dim(valid, new_mask, cursor, axis=1)
  query_slot = cursor + jnp.arange(e)
  mask = valid[:, None, :] & (jnp.arange(slots)[None, None, :] <= query_slot[None, :, None])
  hidden, caches = decode_lib.forward(model, layers, tokens, positions, mask, caches, cursor)
  has_new = jnp.any(new_mask, axis=1)
  logits = jnp.where(has_new[:, None], decode_lib.logits(hidden[:, -1], head), logits)
  return logits, caches, valid, n_real + jnp.sum(new_mask, axis=1, dtype=jnp.int32)


def _decode_turn(graphdef: nnx.GraphDef, params: Any, rest: Any, caches: list[Any],
                 logits: Array, valid: Array, n_real: Array, cursor: Array, active: Array,
                 budget: Array, key: Array, temperature: Array, top_p: Array,
                 stop_seqs: Array, *, cfg: _TurnConfig) -> dict[str, Any]:
  """One model turn of every active row: up to cfg.steps tokens at slots cursor + i.

  Step i draws a token from each live row's logits and feeds it back at slot
  cursor + i at once (its keys are context for the rest of the episode); a
  row stops after its end-of-turn token, a completed stop sequence, or
  `budget` tokens. The loop exits when every row has stopped.

  Args:
    graphdef, params, rest: the split decoder.
    caches, logits, valid, n_real: the cache state (`_extend`).
    cursor: the slot of the turn's first token.
    active: [B] bool, rows that take a turn.
    budget: [B] int32, most tokens of each row's turn (<= cfg.steps).
    key: PRNG key of the turn; step i uses fold_in(key, i).
    temperature, top_p: scalars of `sampler.draw`.
    stop_seqs: [Ns, Ls] int32 stop token sequences, right-aligned, left-padded
      with -1 (Ns may be 0).
    cfg: static settings.

  Returns:
    {'tokens' [B, cfg.steps], 'logp' [B, cfg.steps], 'mask' [B, cfg.steps],
     'finish' [B] (index into TURN_FINISH), 'steps' (slots used), and the
     updated 'caches', 'logits', 'valid', 'n_real'}.
  """
  model = nnx.merge(graphdef, params, rest)
  layers, head = decode_lib.decode_weights(model)
  b, m = logits.shape[0], cfg.steps
  eos_ids = jnp.asarray(cfg.eos_token_ids or (_NO_TOKEN,), jnp.int32)
  draw = functools.partial(sampler_lib.draw, temperature=temperature, top_p=top_p,
                           greedy=cfg.greedy, top_k=cfg.top_k, use_top_p=cfg.use_top_p)

  def body(s):
    i = s["i"]
    live = ~s["done"]
    token, logp = draw(s["logits"], jax.random.fold_in(key, i))
    token = jnp.where(live, token, cfg.pad_token_id)
    slot = cursor + i
    valid = jax.lax.dynamic_update_slice_in_dim(s["valid"], live[:, None], slot, axis=1)
    hidden, caches = decode_lib.forward(model, layers, token[:, None], s["n_real"][:, None],
                                        valid[:, None, :], s["caches"], slot)
    logits = jnp.where(live[:, None], decode_lib.logits(hidden[:, 0], head), s["logits"])
    is_eos = live & jnp.any(token[:, None] == eos_ids[None], axis=-1)
    window, is_stop = sampler_lib.advance_stop_window(s["window"], token, stop_seqs)
    is_stop = live & ~is_eos & is_stop
    count = s["count"] + live.astype(jnp.int32)
    column = lambda a, v: jax.lax.dynamic_update_index_in_dim(a, v, i, axis=1)
    return dict(
        s, i=i + 1, caches=caches, logits=logits, valid=valid,
        n_real=s["n_real"] + live.astype(jnp.int32), window=window, count=count,
        tokens=column(s["tokens"], token), logp=column(s["logp"], jnp.where(live, logp, 0.0)),
        mask=column(s["mask"], live),
        finish=jnp.where(is_eos, _EOS, jnp.where(is_stop, _STOP, s["finish"])),
        done=s["done"] | is_eos | is_stop | (count >= budget))

  state = dict(
      i=jnp.int32(0), caches=caches, logits=logits, valid=valid, n_real=n_real,
      done=~active | (budget < 1), count=jnp.zeros((b,), jnp.int32),
      window=sampler_lib.empty_stop_window(b, stop_seqs),
      tokens=jnp.full((b, m), cfg.pad_token_id, jnp.int32),
      logp=jnp.zeros((b, m), jnp.float32), mask=jnp.zeros((b, m), bool),
      finish=jnp.full((b,), _LENGTH, jnp.int32))
  state = jax.lax.while_loop(lambda s: (s["i"] < m) & ~jnp.all(s["done"]), body, state)
  out = {k: state[k] for k in ("tokens", "logp", "mask", "finish", "caches", "logits", "valid",
                               "n_real")}
  out["steps"] = state["i"]
  return out


@functools.lru_cache(maxsize=None)
def _jitted(graphdef: nnx.GraphDef) -> tuple[Any, Any]:
  """(extend, decode_turn) jitted for one model graph."""
  return (jax.jit(functools.partial(_extend, graphdef)),
          jax.jit(functools.partial(_decode_turn, graphdef), static_argnames=("cfg",)))


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


class MultiTurnSampler:
  """Runs B environment episodes with one model (module docstring).

  Example:
    chat = ChatTurns.from_tokenizer(tokenizer)
    sampler = MultiTurnSampler(model, tokenizer, chat, max_prompt_len=512,
                               max_new_tokens=1024, max_turn_tokens=96)
    episodes = sampler.rollout([EcomEnv() for _ in range(8)], seeds=[0] * 8,
                               levels=[0] * 8, key=jax.random.key(0))
  """

  def __init__(self, model: decoder_lib.Decoder, tokenizer: Any, chat: ChatTurns, *,
               max_prompt_len: int, max_new_tokens: int, max_turn_tokens: int,
               stop_strings: Sequence[str] = (tools.TOOL_CALL_CLOSE,),
               eos_token_ids: Sequence[int] | None = None):
    """Builds the sampler.

    Args:
      model: the decoder; its current parameters are used at each call.
      tokenizer: `encode(text, add_special_tokens=False)`, `decode(ids,
        skip_special_tokens=True)`.
      chat: the chat template's turn texts.
      max_prompt_len: P, the longest first prompt in tokens.
      max_new_tokens: T, the episode's tokens after the prompt (model and
        environment together).
      max_turn_tokens: the most tokens of one model turn.
      stop_strings: texts that end a model turn (as token sequences, inside
        the loop); default the tool-call close tag.
      eos_token_ids: the end-of-turn ids; default the model's and the
        tokenizer's (`models.tokenizer.eos_token_ids`).

    Raises:
      ValueError: naming a length below 1 or a stop string with no tokens.
    """
    for name, value in (("max_prompt_len", max_prompt_len), ("max_new_tokens", max_new_tokens),
                        ("max_turn_tokens", max_turn_tokens)):
      if value < 1:
        raise ValueError(f"{name}={value} must be >= 1.")
    self.model = model
    self.tokenizer = tokenizer
    self.chat = chat
    self.max_prompt_len = max_prompt_len
    self.max_new_tokens = max_new_tokens
    self.max_turn_tokens = max_turn_tokens
    if eos_token_ids is None:
      eos_token_ids = tokenizer_lib.eos_token_ids(tokenizer, model.config)
    self.eos_token_ids = tuple(int(i) for i in eos_token_ids)
    self.pad_token_id = int(model.config.pad_token_id)
    self._stop_seqs = sampler_lib.encode_stop_sequences(tokenizer, stop_strings)
    self._extend, self._decode_turn = _jitted(nnx.split(model, nnx.Param, ...)[0])

  def _encode(self, text: str) -> list[int]:
    ids = [int(i) for i in self.tokenizer.encode(text, add_special_tokens=False)]
    logprobs_lib.check_token_ids(ids, vocab_size=self.model.config.vocab_size, name="episode")
    return ids

  def rollout(self, envs: Sequence[env_base.Environment], *, seeds: Sequence[int],
              levels: Sequence[int], key: Array, temperature: float = 1.0,
              top_p: float = 1.0, top_k: int = 0, greedy: bool = False,
              params: Any = None) -> Episodes:
    """Plays one episode per environment to its end.

    Args:
      envs: B environments (distinct objects; each is reset here).
      seeds: B problem seeds.
      levels: B difficulty levels.
      key: PRNG key; turn k uses fold_in(key, k).
      temperature: > 0 divides the logits; 0 means greedy.
      top_p: nucleus mass in (0, 1].
      top_k: 0 disables it.
      greedy: argmax decoding (log-probs at temperature 1).
      params: optional decoder parameters (nnx.State or pure dict) instead of
        the model's current ones.

    Returns:
      The B episodes.

    Raises:
      ValueError: mismatched lengths, repeated environment objects, bad
        sampling settings, or a first prompt longer than max_prompt_len.
    """
    b = len(envs)
    if not b or len(seeds) != b or len(levels) != b:
      raise ValueError(f"envs, seeds and levels must have one equal length >= 1, got "
                       f"{b}, {len(seeds)}, {len(levels)}.")
    if len({id(e) for e in envs}) != b:
      raise ValueError("envs must be distinct objects (each holds its episode's state).")
    if temperature < 0 or not 0 < top_p <= 1 or top_k < 0:
      raise ValueError(f"temperature={temperature} must be >= 0, top_p={top_p} in (0, 1], "
                       f"top_k={top_k} >= 0.")
    greedy = greedy or temperature == 0
    p, t_max, m = self.max_prompt_len, self.max_new_tokens, self.max_turn_tokens
    observations = [[e.reset(seed=int(s), level=int(l))] for e, s, l in zip(envs, seeds, levels)]
    prompts = [self._encode(self.chat.prompt(o[0])) for o in observations]
    for i, ids in enumerate(prompts):
      if len(ids) > p:
        raise ValueError(f"episode {i} ({envs[i].name}, seed {seeds[i]}, level {levels[i]}): "
                         f"the first prompt has {len(ids)} tokens > max_prompt_len={p}.")

    _, model_params, rest = nnx.split(self.model, nnx.Param, ...)
    params = model_params if params is None else params
    if isinstance(params, nnx.State):
      params = nnx.to_pure_dict(params)
    rest = nnx.to_pure_dict(rest)
    cfg = _TurnConfig(steps=m, greedy=greedy, top_k=0 if greedy else int(top_k),
                      use_top_p=not greedy and top_p < 1.0, eos_token_ids=self.eos_token_ids,
                      pad_token_id=self.pad_token_id)
    c = self.model.config
    slots = _round_up(p + m, _SLOT_MULTIPLE)
    caches = [decode_lib.empty_cache(c, b, slots) for _ in range(c.num_layers)]
    state = {"caches": caches, "logits": jnp.zeros((b, c.vocab_size), jnp.float32),
             "valid": jnp.zeros((b, slots), bool), "n_real": jnp.zeros((b,), jnp.int32)}
    cursor = 0

    def extend(rows: list[list[int]], width: int) -> None:
      nonlocal cursor
      tokens = np.full((b, width), self.pad_token_id, np.int32)
      new = np.zeros((b, width), bool)
      for i, ids in enumerate(rows):
        if ids:
          tokens[i, width - len(ids):] = ids
          new[i, width - len(ids):] = True
      grow(cursor + width)
      state["logits"], state["caches"], state["valid"], state["n_real"] = self._extend(
          params, rest, state["caches"], state["logits"], state["valid"], state["n_real"],
          jnp.asarray(tokens), jnp.asarray(new), jnp.int32(cursor))
      cursor += width

    def grow(needed: int) -> None:
      size = state["valid"].shape[1]
      if needed <= size:
        return
      slots = _round_up(needed, _SLOT_MULTIPLE)
      state["caches"] = [decode_lib.pad_cache(cache, slots) for cache in state["caches"]]
      state["valid"] = jnp.pad(state["valid"], ((0, 0), (0, slots - size)))

    extend(prompts, p)
    segments: list[list[Segment]] = [[] for _ in range(b)]
    turns: list[list[str]] = [[] for _ in range(b)]
    rewards: list[dict[str, float] | None] = [None] * b
    truncated = np.zeros((b,), bool)
    used = np.zeros((b,), np.int64)
    turn = 0
    while any(r is None for r in rewards):
      alive = np.asarray([r is None for r in rewards])
      budget = np.where(alive, np.minimum(m, t_max - used), 0).astype(np.int32)
      grow(cursor + m)
      out = self._decode_turn(
          params, rest, state["caches"], state["logits"], state["valid"], state["n_real"],
          jnp.int32(cursor), jnp.asarray(alive), jnp.asarray(budget),
          jax.random.fold_in(key, turn), jnp.float32(1.0 if greedy else temperature),
          jnp.float32(top_p), jnp.asarray(self._stop_seqs), cfg=cfg)
      for name in state:
        state[name] = out[name]
      cursor += int(out["steps"])
      host = jax.device_get({k: out[k] for k in ("tokens", "logp", "mask", "finish")})
      env_rows: list[list[int]] = [[] for _ in range(b)]
      for i in np.flatnonzero(alive):
        n = int(host["mask"][i].sum())
        ids = [int(x) for x in host["tokens"][i, :n]]
        finish = int(host["finish"][i])
        segments[i].append(Segment(tuple(ids), True, tuple(float(x) for x in host["logp"][i, :n])))
        used[i] += n
        text = self.tokenizer.decode(ids[:-1] if finish == _EOS else ids,
                                     skip_special_tokens=True)
        turns[i].append(text)
        if finish == _LENGTH and used[i] >= t_max:
          rewards[i], truncated[i] = envs[i].truncate().rewards, True
          continue
        result = envs[i].step(text)
        if result.done:
          rewards[i] = result.rewards
          continue
        observations[i].append(result.observation)
        ids = self._encode(self.chat.env_turn(result.observation, ended_turn=finish == _EOS))
        if used[i] + len(ids) + 1 > t_max:  # no room for the answer and a model token
          rewards[i], truncated[i] = envs[i].truncate().rewards, True
          continue
        segments[i].append(Segment(tuple(ids), False))
        used[i] += len(ids)
        env_rows[i] = ids
      longest = max(len(r) for r in env_rows)
      if longest:
        extend(env_rows, _round_up(longest, _EXTEND_MULTIPLE))
      turn += 1

    layout = episode_layout(prompts, segments, prompt_len=p, response_len=t_max,
                            pad_id=self.pad_token_id)
    return Episodes(prompt_len=p, rewards=[dict(r) for r in rewards], turns=turns,
                    observations=observations, truncated=truncated, **layout)
