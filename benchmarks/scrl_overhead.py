r"""SCRL advantages vs one update step (issue 5 target: < 10% of the step).

SCRL's extra work per rollout batch (METHODS.md 3) is the host pass of
`rewards.scrl_blocks.score_curriculum` (decode every response token by token
with SmolLM2's real tokenizer to get character offsets, parse and check the K
blocks, prefix rule, token-to-block index) plus the jitted
`algorithms.scrl.positional_advantages` and `span_advantages`. It is timed on
`--rows` curriculum responses of exactly `--response_len` tokens, next to one
optimizer step of the trainer (`training.step.jit_update_step`, the
`random:tiny` model, the same rows with a `--prompt_len`-token prompt, the
SCRL advantages just computed).

The responses are made to look like real curriculum answers: K blocks
`<pj>...</pj>` of arithmetic prose (with a unicode `×`) ending in a boxed
answer, right about 75% of the time, some text before the first block, a
closing paragraph after the last, cut at `--response_len` tokens; about 5%
are missing a box and about 5% run past the length inside a late block
(truncated). Block answers are checked with the exact checker (with a
math-verify pool the trainer settles plain numbers in-process the same way).
**All** rows are curriculum rows, twice the parsing of a real
SCRL batch of the same size (where half the rows answer the plain prompt).
Both timings grow about linearly with rows x length (the update also has a
fixed per-step cost, so a much smaller batch understates the fraction).

  python -m benchmarks.scrl_overhead          # 256 x 512 (3 update steps)
  python -m benchmarks.scrl_overhead --rows=32 --micro_batches=4 --repeats=1

At 256 x (64 + 512) tokens the three update steps (warm-up + 2 repeats) take
most of the run, minutes each on 2 CPU cores.

The last line printed is JSON with `fraction` = SCRL advantage time / update
step time (best of `--repeats`, after a warm-up run that compiles).
"""

import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlvr_jax.algorithms import scrl
from rlvr_jax.models import loader
from rlvr_jax.rewards import scorers
from rlvr_jax.rewards import scrl_blocks
from rlvr_jax.training import step as step_lib

_SENTENCES = (
    "We read the numbers from the statement and keep track of each one.",
    "Adding the next term to the running total gives {a} + {b} = {s}.",
    "Let me double-check this step: {s} - {b} = {a}, so it is consistent.",
    "Multiplying out, {a} × {b} = {p}, which we carry forward.",
    "This result feeds into the next subproblem.",
    "Writing the intermediate value down avoids mistakes later.",
    "The previous block already gave us part of what we need here.",
)
_OPENING = "Let's solve the subproblems in order, one block each.\n"
_CLOSING = (
    "All the blocks above are consistent with each other and with the "
    "original problem, so the last one answers it. "
) * 20


def _block(j: int, answer: int, sentences: list[str], boxed: bool) -> str:
  final = f"\\boxed{{{answer}}}" if boxed else str(answer)
  return (f"<p{j}>\nSubproblem {j}. {' '.join(sentences)} So the answer is"
          f" {final}.\n</p{j}>\n")


def make_responses(
    tokenizer, *, rows: int, length: int, k: int, seed: int = 0
) -> tuple[np.ndarray, list[list[str]]]:
  """Curriculum responses of exactly `length` tokens (module docstring).

  Args:
    tokenizer: SmolLM2's tokenizer.
    rows: B responses.
    length: T tokens each.
    k: K blocks.
    seed: numpy seed.

  Returns:
    ([B, T] int32 token ids, B lists of K ground truths).
  """
  rng = np.random.default_rng(seed)
  encode = functools.partial(tokenizer.encode, add_special_tokens=False)
  tokens = np.zeros((rows, length), np.int32)
  ground_truths = []
  for b in range(rows):
    truths = rng.integers(2, 999, k)
    answers = [t if rng.random() < 0.75 else t + rng.integers(1, 9)
               for t in truths]
    no_box = rng.random() < 0.05
    truncated = rng.random() < 0.05
    opening = _OPENING if rng.random() < 0.5 else ""
    pools = []
    for _ in range(k):
      a, c = (int(x) for x in rng.integers(2, 99, 2))
      order = rng.permutation(len(_SENTENCES))
      pools.append([_SENTENCES[i].format(a=a, b=c, s=a + c, p=a * c)
                    for i in order])

    def text(n: int, with_closing: bool) -> str:
      blocks = [
          _block(j, answers[j - 1], [pool[i % len(pool)] for i in range(n)],
                 boxed=not (no_box and j == 2))
          for j, pool in enumerate(pools, start=1)
      ]
      return opening + "".join(blocks) + (_CLOSING if with_closing else "")

    n = 1
    while len(encode(text(n + 1, False))) <= length - 16:
      n += 1
    ids = encode(text(n + 4 if truncated else n, True))
    if len(ids) < length:
      raise ValueError(f"response_len={length}: filler too short ({len(ids)})")
    tokens[b] = ids[:length]
    ground_truths.append([str(t) for t in truths])
  return tokens, ground_truths


def scrl_advantages(tokens: np.ndarray, mask: np.ndarray,
                    ground_truths: list[list[str]], *, k: int, group: int,
                    decode) -> tuple[jax.Array, scrl_blocks.CurriculumScores,
                                     float, float]:
  """SCRL token advantages of curriculum rows, timed.

  Args:
    tokens: [B, T] response tokens.
    mask: [B, T] response mask.
    ground_truths: B lists of K ground truths.
    k: K.
    group: curriculum responses per problem (B % group == 0).
    decode: ids -> text.

  Returns:
    (A [B, T], the host scores, host seconds, jitted seconds).
  """
  t0 = time.perf_counter()
  scores = scrl_blocks.score_curriculum(
      tokens, mask, ground_truths, k=k, decode=decode,
      check=lambda pred, gold: scorers.exact_item(gold, pred)[0])
  t1 = time.perf_counter()
  b = tokens.shape[0]
  positional = scrl.positional_advantages(
      jnp.asarray(scores.rewards).reshape(b // group, group, k))
  adv = scrl.span_advantages(positional.reshape(b, k),
                             jnp.asarray(scores.span_index), jnp.asarray(mask))
  adv.block_until_ready()
  return adv, scores, t1 - t0, time.perf_counter() - t1


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rows", type=int, default=256)
  parser.add_argument("--response_len", type=int, default=512)
  parser.add_argument("--prompt_len", type=int, default=64)
  parser.add_argument("--k", type=int, default=4)
  parser.add_argument("--group", type=int, default=4,
                      help="curriculum responses per problem (G/2)")
  parser.add_argument("--micro_batches", type=int, default=16)
  parser.add_argument("--logprob_chunk", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()
  if args.rows % args.group or args.rows % args.micro_batches:
    raise ValueError(f"--rows={args.rows} must be a multiple of --group and "
                     "--micro_batches")

  model, tokenizer, config = loader.load_model("random:tiny")  # SmolLM2's
  decode = functools.partial(tokenizer.decode, skip_special_tokens=True)
  tokens, truths = make_responses(tokenizer, rows=args.rows,
                                  length=args.response_len, k=args.k)
  mask = np.ones(tokens.shape, np.float32)
  run = functools.partial(scrl_advantages, tokens, mask, truths, k=args.k,
                          group=args.group, decode=decode)
  adv, scores, _, _ = run()  # compiles the jitted part
  timings = [run()[2:] for _ in range(args.repeats)]
  host_s, device_s = min(timings, key=sum)

  graphdef, params, rest = step_lib.split_model(model)
  optimizer = optax.adamw(1e-6)
  opt_state = optimizer.init(params)
  chunk = min(args.logprob_chunk, args.response_len)
  update = step_lib.jit_update_step(
      graphdef, optimizer=optimizer, prompt_len=args.prompt_len,
      num_micro=args.micro_batches, donate=False,
      loss_config=step_lib.LossConfig(eps_high=0.28,
                                      max_response_len=args.response_len,
                                      logprob_chunk=chunk))
  prompts = np.random.default_rng(1).integers(
      0, len(tokenizer), (args.rows, args.prompt_len)).astype(np.int32)
  batch = {
      "tokens": jnp.asarray(np.concatenate([prompts, tokens], axis=1)),
      "input_mask": jnp.ones((args.rows, args.prompt_len + args.response_len),
                             bool),
      "response_mask": jnp.asarray(mask),
      # A random model puts about 1/V on every token: ratios near 1.
      "old_logp": jnp.full(mask.shape, -np.log(config.vocab_size), jnp.float32),
      "advantages": adv,
  }
  step_times = []
  for i in range(args.repeats + 1):
    t0 = time.perf_counter()
    update(params, rest, opt_state, batch)[2]["policy/loss"].block_until_ready()
    if i:  # the first call compiles
      step_times.append(time.perf_counter() - t0)
  update_s = min(step_times)
  scrl_s = host_s + device_s
  print(f"SCRL advantages, {args.rows} x {args.response_len} tokens: "
        f"{scrl_s:.3f} s (host {host_s:.3f} s, jitted {device_s:.4f} s)")
  print(f"update step, random:tiny, {args.rows} x "
        f"({args.prompt_len} + {args.response_len}) tokens: {update_s:.3f} s")
  print(json.dumps({
      "fraction": round(scrl_s / update_s, 4),
      "scrl_s": round(scrl_s, 4), "host_s": round(host_s, 4),
      "jitted_s": round(device_s, 4), "update_step_s": round(update_s, 4),
      "rows": args.rows, "response_len": args.response_len,
      "prompt_len": args.prompt_len, "k": args.k,
      "malformed_frac": round(float(scores.malformed.mean()), 4),
      "mean_solved_prefix": round(float(scores.rewards.sum(1).mean()), 4),
  }))


if __name__ == "__main__":
  main()
