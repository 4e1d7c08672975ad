r"""One full RL iteration on SmolLM2-135M: ours vs TRL's GRPOTrainer (PyTorch CPU).

Same weights (our GGUF import exported to an HF directory), same prompts
(reasoning-gym arithmetic, chat template), 8 prompts x 4 responses, 64 new
tokens at temperature 1.0, one optimizer step on all 32 responses, clip 0.2,
token-mean (DAPO) loss, no KL (beta = 0), float32, no gradient checkpointing
on either side. One iteration = generation + reward + advantage + loss
forward/backward + AdamW. Each framework runs in its own process; the
reported time is the median of the warm iterations (the first ones compile
or warm caches).

  python -m benchmarks.rl_step        # table, then one JSON line {ours_s, trl_s, speedup}

Target (issue 3): ours >= 1.3x faster.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

_PROMPTS, _GROUP, _NEW = 8, 4, 64


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
  from rlvr_jax.sampling import sampler as sampler_lib  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
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
  times = []
  for it in range(iterations):
    batch_records = records[it * _PROMPTS:(it + 1) * _PROMPTS]
    t0 = time.perf_counter()
    out = sampler.generate([r["prompt"] for r in batch_records], key=jax.random.key(it),
                           temperature=1.0, num_samples=_GROUP)
    gen_s = time.perf_counter() - t0
    rewards = _reward(out.texts, [r["answer"] for r in batch_records for _ in range(_GROUP)])
    adv = advantages.grpo(jnp.asarray(rewards), group_size=_GROUP)
    batch = {"tokens": out.tokens, "input_mask": out.input_mask,
             "response_mask": out.response_mask, "old_logp": out.logp,
             "advantages": np.asarray(adv)[:, None] * out.response_mask}
    params, opt_state, metrics = update(params, rest, opt_state, batch)
    nnx.update(model, params)
    jax.block_until_ready(metrics)
    times.append((time.perf_counter() - t0, gen_s))
  warm = times[2:] or times[-1:]
  return {"framework": "rlvr_jax", "iteration_s": statistics.median(t for t, _ in warm),
          "generation_s": statistics.median(g for _, g in warm),
          "first_iteration_s": times[0][0]}


def run_trl(iterations: int) -> dict:
  """TRL's GRPOTrainer on the same weights, prompts and settings."""
  import datasets  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  import trl  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from rlvr_jax.models import loader, weights  # pylint: disable=g-import-not-at-top

  model, tokenizer, config = loader.load_model("smollm2")
  records = _prompts(tokenizer, _PROMPTS * (iterations + 1))
  answers = {r["prompt"]: r["answer"] for r in records}
  hf_dir = tempfile.mkdtemp()
  weights.export_hf_safetensors(nnx.to_pure_dict(nnx.state(model, nnx.Param)), config, hf_dir,
                                tokenizer=tokenizer)
  del model
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


def _subprocess(args: list[str]) -> dict:
  out = subprocess.run([sys.executable, "-m", "benchmarks.rl_step", *args], check=True,
                       capture_output=True, text=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--worker", choices=["ours", "trl"], default=None)
  parser.add_argument("--iterations", type=int, default=5)
  args = parser.parse_args()
  if args.worker:
    fn = run_ours if args.worker == "ours" else run_trl
    print(json.dumps(fn(args.iterations)))
    return
  ours = _subprocess(["--worker=ours", f"--iterations={args.iterations}"])
  trl_row = _subprocess(["--worker=trl", f"--iterations={args.iterations}"])
  print(f"{'framework':<10} {'warm iteration s':>17} {'first iteration s':>18}")
  for row in (ours, trl_row):
    print(f"{row['framework']:<10} {row['iteration_s']:>17.2f} {row['first_iteration_s']:>18.2f}")
  print(f"(ours: generation {ours['generation_s']:.2f} s of the iteration)")
  print(json.dumps({"ours_s": round(ours["iteration_s"], 2), "trl_s": round(trl_row["iteration_s"], 2),
                    "speedup": round(trl_row["iteration_s"] / ours["iteration_s"], 3)}))


if __name__ == "__main__":
  main()
