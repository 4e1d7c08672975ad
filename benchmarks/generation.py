r"""Batched generation: our KV-cache sampler vs transformers' `generate`.

SmolLM2-135M-Instruct (the local GGUF, dequantized to float32 by both), 32
chat-templated arithmetic questions, 128 new tokens, PyTorch on CPU in
float32 (`do_sample=True` at the same temperature and top-p, and greedy), on
the same weights, prompts and machine, one timed run each.

  python -m benchmarks.generation            # prints a table, then one JSON line

Both generate exactly 128 tokens per row (EOS does not stop a row: ours with
`eos_token_ids=()`, transformers with `generation_config.eos_token_id=None`),
so tokens/s is 32 * 128 / the wall time of one `generate` call, prefill
included. Our first call compiles; it is timed separately (`compile s`) and
not counted; transformers gets a 4-token warm-up call. The 1-minute load
average before each timed call is printed: the machine is shared, and
PyTorch's OpenMP threads slow down far more than XLA's when another process
holds a core, so compare rows taken at a low load. Target (issue 2): ours >=
1.5x transformers' tokens/s when sampling. The last line is JSON with
`ours_tokens_per_s`, `hf_tokens_per_s`, `speedup` (sampling) and the greedy
numbers.
"""

import argparse
import json
import os
import random
import time

_QUESTION_FORMS = ("What is {a} + {b}?", "What is {a} - {b}?", "What is {a} * {b}?",
                   "Compute {a} + {b} - {c}.", "What is {a} times {b}, plus {c}?")


def make_prompts(tokenizer, n: int, seed: int = 0) -> list[str]:
  """n chat-templated arithmetic questions (seeded)."""
  rng = random.Random(seed)
  prompts = []
  for _ in range(n):
    form = rng.choice(_QUESTION_FORMS)
    question = form.format(a=rng.randint(2, 99), b=rng.randint(2, 99), c=rng.randint(2, 99))
    prompts.append(tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True))
  return prompts


def make_sampler(prompts: list[str], *, new_tokens: int, prompt_bucket: int):
  """Our SmolLM2 sampler, P = the longest prompt rounded up to prompt_bucket."""
  from rlvr_jax.models import loader  # pylint: disable=g-import-not-at-top
  from rlvr_jax.sampling import sampler as sampler_lib  # pylint: disable=g-import-not-at-top

  model, tokenizer, _ = loader.load_model("smollm2")
  longest = max(len(tokenizer.encode(p, add_special_tokens=False)) for p in prompts)
  return sampler_lib.Sampler(
      model, tokenizer, max_prompt_len=-(-longest // prompt_bucket) * prompt_bucket,
      max_new_tokens=new_tokens, eos_token_ids=())


def run_ours(sampler, prompts: list[str], *, temperature: float, top_p: float,
             greedy: bool) -> dict:
  """Compiles (first call) and times (second call) our sampler."""
  import jax  # pylint: disable=g-import-not-at-top

  kwargs = dict(temperature=temperature, top_p=top_p, greedy=greedy)
  t0 = time.perf_counter()
  sampler.generate(prompts, key=jax.random.key(1), **kwargs)
  first_s = time.perf_counter() - t0
  load = os.getloadavg()[0]
  t0 = time.perf_counter()
  out = sampler.generate(prompts, key=jax.random.key(2), **kwargs)
  wall_s = time.perf_counter() - t0
  tokens = int(out.response_mask.sum())
  return dict(tokens=tokens, wall_s=wall_s, tokens_per_s=tokens / wall_s, load=load,
              compile_s=first_s - wall_s, sample=out.texts[0])


def load_hf():
  """transformers' LlamaForCausalLM from the same GGUF, dequantized to float32."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from rlvr_jax.models import loader  # pylint: disable=g-import-not-at-top

  path = loader.default_gguf_path()
  model = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
  model.generation_config.eos_token_id = None  # every row runs to max_new_tokens
  return model


def run_hf(model, tokenizer, prompts: list[str], *, new_tokens: int, temperature: float,
           top_p: float, greedy: bool) -> dict:
  """Times transformers' generate (PyTorch CPU, float32) after a short warm-up."""
  import torch  # pylint: disable=g-import-not-at-top

  batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
  kwargs = dict(do_sample=not greedy, max_new_tokens=new_tokens,
                pad_token_id=tokenizer.pad_token_id)
  if greedy:
    kwargs.update(temperature=None, top_p=None, top_k=None)
  else:
    kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
  with torch.no_grad():
    model.generate(**batch, **dict(kwargs, max_new_tokens=4))
    torch.manual_seed(0)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    out = model.generate(**batch, **kwargs)
    wall_s = time.perf_counter() - t0
  prompt_len = batch["input_ids"].shape[1]
  if out.shape[1] - prompt_len != new_tokens:
    raise RuntimeError(f"transformers generated {out.shape[1] - prompt_len} tokens, "
                       f"not --new_tokens={new_tokens}.")
  tokens = new_tokens * out.shape[0]
  return dict(tokens=tokens, wall_s=wall_s, tokens_per_s=tokens / wall_s, load=load,
              sample=tokenizer.decode(out[0, prompt_len:], skip_special_tokens=True))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--num_prompts", type=int, default=32)
  parser.add_argument("--new_tokens", type=int, default=128)
  parser.add_argument("--temperature", type=float, default=1.0)
  parser.add_argument("--top_p", type=float, default=1.0)
  parser.add_argument("--prompt_bucket", type=int, default=16,
                      help="our prompt width P is the longest prompt rounded up to this")
  parser.add_argument("--skip_hf", action="store_true", help="time ours only")
  args = parser.parse_args()

  from rlvr_jax.models import loader  # pylint: disable=g-import-not-at-top
  from rlvr_jax.models import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  # The GGUF's tokenizer (transformers builds it; cached on disk), left padding.
  tokenizer = tokenizer_lib.load_tokenizer(loader.default_gguf_path())
  prompts = make_prompts(tokenizer, args.num_prompts)
  sampler = make_sampler(prompts, new_tokens=args.new_tokens, prompt_bucket=args.prompt_bucket)
  hf_model = None if args.skip_hf else load_hf()
  settings = dict(temperature=args.temperature, top_p=args.top_p)
  rows = {}
  for mode, greedy in (("sampling", False), ("greedy", True)):
    rows[("ours", mode)] = run_ours(sampler, prompts, greedy=greedy, **settings)
    if not args.skip_hf:
      rows[("transformers", mode)] = run_hf(hf_model, tokenizer, prompts, greedy=greedy,
                                            new_tokens=args.new_tokens, **settings)

  print(f"SmolLM2-135M f32, {args.num_prompts} prompts x {args.new_tokens} new tokens, "
        f"temperature={args.temperature} top_p={args.top_p}, our P={sampler.prompt_len}, "
        f"{os.cpu_count()} CPUs")
  print(f"{'impl':14s} {'mode':9s} {'tokens':>7s} {'wall s':>8s} {'tokens/s':>9s} "
        f"{'compile s':>10s} {'load avg':>9s}")
  for (impl, mode), r in rows.items():
    compile_s = f"{r['compile_s']:10.1f}" if "compile_s" in r else f"{'-':>10s}"
    print(f"{impl:14s} {mode:9s} {r['tokens']:7d} {r['wall_s']:8.2f} "
          f"{r['tokens_per_s']:9.1f} {compile_s} {r['load']:9.1f}")
  for (impl, mode), r in rows.items():
    print(f"{impl} {mode} row 0: {r['sample'][:100]!r}")
  result = {
      "ours_tokens_per_s": round(rows[("ours", "sampling")]["tokens_per_s"], 1),
      "ours_greedy_tokens_per_s": round(rows[("ours", "greedy")]["tokens_per_s"], 1),
      "ours_compile_s": round(rows[("ours", "sampling")]["compile_s"], 1),
  }
  if not args.skip_hf:
    hf, hf_greedy = rows[("transformers", "sampling")], rows[("transformers", "greedy")]
    result.update(
        hf_tokens_per_s=round(hf["tokens_per_s"], 1),
        hf_greedy_tokens_per_s=round(hf_greedy["tokens_per_s"], 1),
        speedup=round(rows[("ours", "sampling")]["tokens_per_s"] / hf["tokens_per_s"], 2),
        greedy_speedup=round(rows[("ours", "greedy")]["tokens_per_s"]
                             / hf_greedy["tokens_per_s"], 2))
  print(json.dumps(result))


if __name__ == "__main__":
  main()
