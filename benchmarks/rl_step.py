r"""One full RL iteration on SmolLM2-135M: ours vs TRL's GRPOTrainer and tunix's GRPOLearner.

Same weights (our GGUF import exported to an HF directory), same prompts
(reasoning-gym arithmetic, chat template), 8 prompts x 4 responses, 64 new
tokens at temperature 1.0, one optimizer step on all 32 responses, clip 0.2,
token-mean (DAPO) loss, no KL (beta = 0), float32, no gradient checkpointing
on any side. One iteration = generation + reward + advantage + loss
forward/backward + AdamW. Each framework runs in its own process; the
reported time is the median of the warm iterations (the first ones compile
or warm caches). Ours runs the trainer's update: shared prompts and packed
responses, whose packed size varies with the batch; each size compiles once
(at most 8), and that compilation is timed apart, reported, and counted in
the first iteration only.

  python -m benchmarks.rl_step               # ours vs TRL: table, then {ours_s, trl_s, speedup}
  python -m benchmarks.rl_step --peer=tunix  # ours vs tunix: {ours_s, tunix_s, speedup_vs_tunix}
  python -m benchmarks.rl_step --peer=all    # all three in one table and one JSON line

The tunix peer (google-tunix 0.1.7, a JAX framework; benchmarks/_tunix_peer.py)
runs in its own venv, `make setup-tunix` (.venv-tunix; `--tunix_python` picks
another interpreter): it pins safetensors < 0.8 and an older transformers.
Before timing it checks its logits against transformers on one prompt and,
after, that its update moved the weights; both numbers are printed under the
table.

Targets (issue 14): ours >= 2.0x TRL (issue 3 asked 1.3x), ours >= 1.5x tunix.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

_PROMPTS, _GROUP, _NEW = 8, 4, 64
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TUNIX_PYTHON = os.path.join(_REPO, ".venv-tunix", "bin", "python")


def _prompts(tokenizer, n: int) -> list[dict]:
  from rlvr_jax.data import tasks  # pylint: disable=g-import-not-at-top
  source = tasks.TaskSource("basic_arithmetic", seed=0, size=4 * n, split="train",
                            task_kwargs={"min_terms": 2, "max_terms": 2, "max_digits": 2,
                                         "operators": ("+", "-", "*"),
                                         "allow_parentheses": False})
  records = [r for r in (source[i] for i in range(len(source))) if r is not None][:n]
  for r in records:
    r["prompt"] = tokenizer.apply_chat_template(
        [{"role": "user", "content": r["problem"] + "\nPut your final answer within \\boxed{}."}],
        tokenize=False, add_generation_prompt=True)
  return records


def _reward(texts: list[str], answers: list[str]) -> list[float]:
  from rlvr_jax.rewards import answers as answers_lib  # pylint: disable=g-import-not-at-top
  return [float(answers_lib.extract_boxed(t) == a) for t, a in zip(texts, answers)]


def run_ours(iterations: int) -> dict:
  """Our trainer's pieces for one iteration, timed end to end."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from rlvr_jax.algorithms import advantages  # pylint: disable=g-import-not-at-top
  from rlvr_jax.models import loader  # pylint: disable=g-import-not-at-top
  from rlvr_jax.models import shared_prompt  # pylint: disable=g-import-not-at-top
  from rlvr_jax.sampling import sampler as sampler_lib  # pylint: disable=g-import-not-at-top
  from rlvr_jax.training import step as step_lib  # pylint: disable=g-import-not-at-top

  model, tokenizer, _ = loader.load_model("smollm2")
  records = _prompts(tokenizer, _PROMPTS * (iterations + 1))
  # P = the longest prompt rounded up to 8 (TRL pads a batch to its longest).
  longest = max(len(tokenizer.encode(r["prompt"], add_special_tokens=False)) for r in records)
  sampler = sampler_lib.Sampler(model, tokenizer, max_prompt_len=-(-longest // 8) * 8,
                                max_new_tokens=_NEW)
  graphdef, params, rest = step_lib.split_model(model)
  optimizer = optax.adamw(1e-5, weight_decay=0.0)
  opt_state = optimizer.init(params)
  cfg = step_lib.LossConfig(eps_low=0.2, eps_high=0.2, max_response_len=_NEW)
  update = step_lib.jit_update_step(graphdef, optimizer=optimizer,
                                    prompt_len=sampler.prompt_len, num_micro=2,
                                    loss_config=cfg)
  times, compiled, compile_s = [], {}, []
  for it in range(iterations):
    batch_records = records[it * _PROMPTS:(it + 1) * _PROMPTS]
    t0, this_compile = time.perf_counter(), 0.0
    out = sampler.generate([r["prompt"] for r in batch_records], key=jax.random.key(it),
                           temperature=1.0, num_samples=_GROUP, params=params)
    gen_s = time.perf_counter() - t0
    rewards = _reward(out.texts, [r["answer"] for r in batch_records for _ in range(_GROUP)])
    adv = advantages.grpo(jnp.asarray(rewards), group_size=_GROUP)
    # The trainer's update (`Trainer._sharing`): each group's prompt and the
    # batch-wide prefix run once (4-row blocks fit both 16-row micro-batches),
    # and each response only up to its last token, packed.
    tokens, input_mask = shared_prompt.align_prefix(
        np.asarray(out.tokens), np.asarray(out.input_mask), prompt_len=sampler.prompt_len)
    sharing = shared_prompt.prompt_sharing(tokens, input_mask, prompt_len=sampler.prompt_len,
                                           group_size=_GROUP)
    sharing = sharing._replace(packed=shared_prompt.pack_capacity(
        np.asarray(out.response_mask), num_micro=2, block=sharing.share, shards=1))
    batch = {"tokens": tokens, "input_mask": input_mask,
             "response_mask": out.response_mask, "old_logp": out.logp,
             "advantages": np.asarray(adv)[:, None] * out.response_mask}
    if sharing not in compiled:  # once per packed size (at most PACK_BUCKETS), timed apart
      t1 = time.perf_counter()
      compiled[sharing] = update.lower(params, rest, opt_state, batch, sharing=sharing).compile()
      this_compile = time.perf_counter() - t1
      compile_s.append(this_compile)
    params, opt_state, metrics = compiled[sharing](params, rest, opt_state, batch)
    jax.block_until_ready(metrics)
    times.append((time.perf_counter() - t0 - this_compile, gen_s))
  warm = times[2:] or times[-1:]
  return {"framework": "rlvr_jax", "iteration_s": statistics.median(t for t, _ in warm),
          "generation_s": statistics.median(g for _, g in warm),
          "first_iteration_s": times[0][0] + compile_s[0],
          "update_compiles": len(compile_s), "update_compile_s": sum(compile_s)}


def _export_smollm2(hf_dir: str, iterations: int) -> tuple[object, list[dict]]:
  """Our SmolLM2 weights as the peers' HF directory; returns (tokenizer, the prompts)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from rlvr_jax.models import loader, weights  # pylint: disable=g-import-not-at-top

  model, tokenizer, config = loader.load_model("smollm2")
  records = _prompts(tokenizer, _PROMPTS * (iterations + 1))
  weights.export_hf_safetensors(nnx.to_pure_dict(nnx.state(model, nnx.Param)), config, hf_dir,
                                tokenizer=tokenizer)
  return tokenizer, records


def run_trl(iterations: int) -> dict:
  """TRL's GRPOTrainer on the same weights, prompts and settings."""
  import datasets  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  import trl  # pylint: disable=g-import-not-at-top

  hf_dir = tempfile.mkdtemp()
  _, records = _export_smollm2(hf_dir, iterations)
  answers = {r["prompt"]: r["answer"] for r in records}
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32)
  hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
  hf_tok.padding_side = "left"

  def reward_fn(prompts, completions, **_):
    return _reward(completions, [answers[p] for p in prompts])

  times = []

  class Timer(transformers.TrainerCallback):
    def on_step_begin(self, *_args, **_kwargs):
      self.t0 = time.perf_counter()

    def on_step_end(self, *_args, **_kwargs):
      times.append(time.perf_counter() - self.t0)

  args = trl.GRPOConfig(
      output_dir=tempfile.mkdtemp(), per_device_train_batch_size=_PROMPTS * _GROUP,
      gradient_accumulation_steps=1, num_generations=_GROUP, max_completion_length=_NEW,
      temperature=1.0, learning_rate=1e-5, beta=0.0, epsilon=0.2, loss_type="dapo",
      bf16=False, gradient_checkpointing=False, max_steps=iterations, logging_steps=1,
      report_to=[], use_cpu=True, save_strategy="no", seed=0, shuffle_dataset=False)
  dataset = datasets.Dataset.from_list([{"prompt": r["prompt"]} for r in records])
  trainer = trl.GRPOTrainer(model=hf_model, reward_funcs=reward_fn, args=args,
                            train_dataset=dataset, processing_class=hf_tok,
                            callbacks=[Timer()])
  trainer.train()
  warm = times[2:] or times[-1:]
  return {"framework": "trl", "iteration_s": statistics.median(warm),
          "first_iteration_s": times[0]}


def run_export(iterations: int, data_dir: str) -> dict:
  """Writes what the tunix worker reads, so that its venv needs none of ours.

  `data_dir` gets hf/ (our weights and tokenizer as an HF directory, as TRL
  gets them), prompts.json ({"prompt_len": P, the longest prompt rounded up to
  8 as ours pads; "records": [{"prompt", "answer"}], the same prompts as ours
  and TRL's}) and reference.npz (transformers' float32 logits [S, V] on the
  first prompt's S tokens, for the tunix worker's logits check).
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top

  hf_dir = os.path.join(data_dir, "hf")
  tokenizer, records = _export_smollm2(hf_dir, iterations)
  encoded = [tokenizer.encode(r["prompt"], add_special_tokens=False) for r in records]
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
  with torch.no_grad():
    logits = hf_model(torch.tensor([encoded[0]])).logits[0].numpy()
  np.savez(os.path.join(data_dir, "reference.npz"), tokens=np.asarray(encoded[0], np.int32),
           logits=logits)
  with open(os.path.join(data_dir, "prompts.json"), "w", encoding="utf-8") as f:
    json.dump({"prompt_len": -(-max(map(len, encoded)) // 8) * 8,
               "records": [{"prompt": r["prompt"], "answer": r["answer"]} for r in records]}, f)
  return {"framework": "export", "data_dir": data_dir}


def _check_tunix_python(path: str) -> str:
  """Returns `path` if it is an interpreter; else exits naming `make setup-tunix`."""
  if not os.access(path, os.X_OK):
    raise SystemExit(
        f"--tunix_python={path} is not an executable Python: run `make setup-tunix` to create "
        ".venv-tunix (google-tunix 0.1.7 in its own venv), or point --tunix_python at one.")
  return path


def _subprocess(args: list[str], python: str = sys.executable) -> dict:
  """Runs one worker of this file under `python`; returns its final JSON line."""
  out = subprocess.run([python, "-m", "benchmarks.rl_step", *args], capture_output=True,
                       text=True, cwd=_REPO, check=False)
  if out.returncode != 0:
    raise SystemExit(f"worker {' '.join(args)} ({python}) failed with exit code "
                     f"{out.returncode}; its stderr ends:\n{out.stderr[-4000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def summary(ours: dict, trl_row: dict | None = None, tunix_row: dict | None = None) -> dict:
  """The final JSON line: the warm iteration times and ours' speedup over each peer run.

  Args:
    ours: our worker's row ({"iteration_s": ...}).
    trl_row: TRL's row, or None when it did not run.
    tunix_row: tunix's row, or None when it did not run.

  Returns:
    {"ours_s", then "trl_s", "speedup" (trl_s / ours_s) when TRL ran, then
    "tunix_s", "speedup_vs_tunix" (tunix_s / ours_s) when tunix ran}; times
    rounded to 0.01 s, ratios to 0.001.
  """
  out = {"ours_s": round(ours["iteration_s"], 2)}
  if trl_row is not None:
    out["trl_s"] = round(trl_row["iteration_s"], 2)
    out["speedup"] = round(trl_row["iteration_s"] / ours["iteration_s"], 3)
  if tunix_row is not None:
    out["tunix_s"] = round(tunix_row["iteration_s"], 2)
    out["speedup_vs_tunix"] = round(tunix_row["iteration_s"] / ours["iteration_s"], 3)
  return out


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--worker", choices=["ours", "trl", "export", "tunix"], default=None)
  parser.add_argument("--iterations", type=int, default=5)
  parser.add_argument("--peer", choices=["trl", "tunix", "all"], default="trl",
                      help="the peers timed beside ours: TRL (default), tunix, or both.")
  parser.add_argument("--tunix_python", default=_TUNIX_PYTHON,
                      help="the interpreter of tunix's venv (`make setup-tunix`).")
  parser.add_argument("--data_dir", default=None,
                      help="export/tunix workers: the directory the export writes.")
  args = parser.parse_args()
  if args.worker in ("export", "tunix") and not args.data_dir:
    raise SystemExit(f"--worker={args.worker} needs --data_dir.")
  if args.worker == "tunix":
    from benchmarks import _tunix_peer  # pylint: disable=g-import-not-at-top
    print(json.dumps(_tunix_peer.run(args.iterations, args.data_dir, group=_GROUP,
                                     prompts_per_step=_PROMPTS, new_tokens=_NEW,
                                     reward_fn=_reward)))
    return
  if args.worker:
    if args.worker == "export":
      print(json.dumps(run_export(args.iterations, args.data_dir)))
    else:
      fn = run_ours if args.worker == "ours" else run_trl
      print(json.dumps(fn(args.iterations)))
    return
  # Checked first, so that a missing venv fails before minutes of the other workers.
  tunix_python = (_check_tunix_python(args.tunix_python)
                  if args.peer in ("tunix", "all") else None)
  iterations = f"--iterations={args.iterations}"
  ours = _subprocess(["--worker=ours", iterations])
  trl_row = (_subprocess(["--worker=trl", iterations])
             if args.peer in ("trl", "all") else None)
  tunix_row = None
  if tunix_python:
    with tempfile.TemporaryDirectory() as data_dir:
      _subprocess(["--worker=export", iterations, f"--data_dir={data_dir}"])
      tunix_row = _subprocess(["--worker=tunix", iterations, f"--data_dir={data_dir}"],
                              python=tunix_python)
  print(f"{'framework':<10} {'warm iteration s':>17} {'first iteration s':>18}")
  for row in (ours, trl_row, tunix_row):
    if row is not None:
      print(f"{row['framework']:<10} {row['iteration_s']:>17.2f} "
            f"{row['first_iteration_s']:>18.2f}")
  print(f"(ours: generation {ours['generation_s']:.2f} s of the iteration; the update "
        f"compiled {ours['update_compiles']} packed sizes in {ours['update_compile_s']:.1f} s, "
        "counted in the first iteration only)")
  if tunix_row is not None:
    print(f"(tunix: generation {tunix_row['generation_s']:.2f} s of the iteration; logits vs "
          f"transformers max |diff| {tunix_row['logits_max_abs_diff']:.2e} with its RoPE theta "
          f"patched, {tunix_row['logits_max_abs_diff_unpatched']:.2f} without; groups with mixed "
          f"exact-answer rewards in the timed steps: {tunix_row['mixed_reward_groups']}; its "
          f"updates, with one untimed step on a dense reward after them, moved the weights by "
          f"|delta| = {tunix_row['param_delta_norm']:.3e} (|params| = "
          f"{tunix_row['param_norm']:.1f}))")
  print(json.dumps(summary(ours, trl_row, tunix_row)))


if __name__ == "__main__":
  main()
