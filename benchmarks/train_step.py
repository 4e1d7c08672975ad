r"""Forward + backward + AdamW on SmolLM2-135M, 16 x 256 tokens, float32.

Ours (the trainer's own path: `response_logprobs` with the chunked LM head,
remat per block, optax AdamW, jitted with donated buffers) against the same
step in PyTorch with transformers' LlamaForCausalLM on the same weights. Each
framework runs in its own subprocess so that its peak RSS is its own.

  python -m benchmarks.train_step            # prints a table, then one JSON line

Targets (issue 2): ours >= 0.9x PyTorch's tokens/s, our peak RSS <= 6 GB.
The last line is JSON with `tokens_per_s`, `torch_tokens_per_s`,
`peak_rss_gb` (ours, with the remat setting chosen by the table).
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

_B, _S = 16, 256


def _peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_ours(remat: str, steps: int, chunk: int) -> dict:
  """Times our update on random tokens; returns tokens/s and peak RSS."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from rlvr_jax.models import loader, logprobs  # pylint: disable=g-import-not-at-top

  model, _, _ = loader.load_model("smollm2", remat=remat)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  optimizer = optax.adamw(1e-5, weight_decay=0.1)
  opt_state = optimizer.init(params)
  tokens = jax.random.randint(jax.random.key(0), (_B, _S + 1), 0, 49152)
  mask = jnp.ones_like(tokens, dtype=bool)

  @jax.jit
  def step(params, opt_state, tokens):
    def loss_fn(p):
      m = nnx.merge(graphdef, p, rest)
      out = logprobs.response_logprobs(m, tokens, mask, prompt_len=1,
                                       chunk_size=chunk or None)
      return -jnp.mean(out.logp)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  step = jax.jit(step.__wrapped__, donate_argnums=(0, 1))
  t0 = time.perf_counter()
  params, opt_state, loss = step(params, opt_state, tokens)
  loss.block_until_ready()
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    params, opt_state, loss = step(params, opt_state, tokens)
    loss.block_until_ready()
    times.append(time.perf_counter() - t0)
  best = min(times)
  return {"framework": f"jax remat={remat}", "step_s": best,
          "tokens_per_s": _B * _S / best, "first_step_s": compile_s,
          "peak_rss_gb": _peak_rss_gb(), "loss": float(loss)}


def run_torch(steps: int) -> dict:
  """The same step in PyTorch: LlamaForCausalLM built from the GGUF weights."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from rlvr_jax.models import loader, weights  # pylint: disable=g-import-not-at-top

  model, _, config = loader.load_model("smollm2")
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  with tempfile.TemporaryDirectory() as hf_dir:
    weights.export_hf_safetensors(params, config, hf_dir)
    del model, params
    tm = transformers.LlamaForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32)
  tm.train()
  opt = torch.optim.AdamW(tm.parameters(), lr=1e-5, weight_decay=0.1)
  tokens = torch.randint(0, 49152, (_B, _S + 1))
  times = []
  for i in range(steps + 1):
    t0 = time.perf_counter()
    out = tm(input_ids=tokens[:, :-1], labels=tokens[:, :-1])
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if i:
      times.append(time.perf_counter() - t0)
  best = min(times)
  return {"framework": "torch", "step_s": best, "tokens_per_s": _B * _S / best,
          "peak_rss_gb": _peak_rss_gb(), "loss": float(out.loss)}


def _subprocess(args: list[str]) -> dict:
  out = subprocess.run([sys.executable, "-m", "benchmarks.train_step", *args],
                       check=True, capture_output=True, text=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--worker", choices=["ours", "torch"], default=None)
  parser.add_argument("--remat", default="full")
  parser.add_argument("--remats", default="full,dots")
  parser.add_argument("--chunk", type=int, default=64)
  parser.add_argument("--steps", type=int, default=3)
  args = parser.parse_args()
  if args.worker == "ours":
    print(json.dumps(run_ours(args.remat, args.steps, args.chunk)))
    return
  if args.worker == "torch":
    print(json.dumps(run_torch(args.steps)))
    return
  rows = [_subprocess(["--worker=ours", f"--remat={r}", f"--chunk={args.chunk}",
                       f"--steps={args.steps}"]) for r in args.remats.split(",")]
  torch_row = _subprocess(["--worker=torch", f"--steps={args.steps}"])
  print(f"{'framework':<18} {'step s':>8} {'tokens/s':>9} {'peak RSS GB':>12}")
  for row in rows + [torch_row]:
    print(f"{row['framework']:<18} {row['step_s']:>8.2f} {row['tokens_per_s']:>9.1f} "
          f"{row['peak_rss_gb']:>12.2f}")
  fitting = [r for r in rows if r["peak_rss_gb"] <= 6.0] or rows
  best = max(fitting, key=lambda r: r["tokens_per_s"])
  print(json.dumps({"tokens_per_s": round(best["tokens_per_s"], 1),
                    "torch_tokens_per_s": round(torch_row["tokens_per_s"], 1),
                    "peak_rss_gb": round(best["peak_rss_gb"], 2),
                    "ratio": round(best["tokens_per_s"] / torch_row["tokens_per_s"], 3),
                    "setting": best["framework"]}))


if __name__ == "__main__":
  main()
