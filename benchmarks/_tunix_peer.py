r"""google-tunix's GRPO learner as the JAX peer of benchmarks/rl_step.py (issue 14).

Runs in tunix's own venv (`make setup-tunix`: google-tunix 0.1.7 pins
safetensors < 0.8 and an older transformers than ours), as
`.venv-tunix/bin/python -m benchmarks.rl_step --worker=tunix --data_dir=DIR`,
on what rl_step.py's export worker wrote into DIR with our venv: our SmolLM2
weights as an HF directory, the prompts, and transformers' logits on the first
prompt. Nothing here imports our package's JAX code; the reward is rl_step.py's.

The settings are the other rows': 8 prompts x 4 responses (`num_generations`),
64 new tokens at temperature 1 (tunix samples with top_p = 1, i.e. the full
distribution), float32, beta = 0 (no reference model), clip 0.2 on both sides,
token-mean loss (`loss_agg_mode="token-mean"`), one AdamW update (lr 1e-5, no
weight decay) on all 32 responses per iteration (`num_iterations=1`), in 2
micro-batches of 4 prompts as ours, tunix's vanilla (in-process JAX) rollout sharing the
actor's weights on one mesh.

What tunix 0.1.7 needs here, each done below:
  * Its Llama attention calls `apply_rope` without the config's `rope_theta`,
    so every model gets the default theta 1e6; SmolLM2's is 1e5, which puts
    the logits about 6.6 off transformers'. `_patch_rope_theta` rebinds the
    module's `apply_rope` with the config's theta before anything is traced.
  * Its mesh must have Auto axis types: jax 0.10.2's `make_mesh` defaults to
    Explicit ones, which tunix's sharding code does not handle.
  * SmolLM2's tokenizer pads with <|im_end|>, its end-of-turn token, and tunix
    masks every pad id inside the prompt (`prompt_ids != pad_id`), which would
    hide the chat template's <|im_end|> tokens; we pad with <|endoftext|>,
    which no prompt contains.
  * The dataset's columns must be NumPy arrays (tunix repeats and slices them
    as arrays).

One iteration is one global step of `GRPOLearner.train`: rollout, reward,
advantages, forward/backward and the optimizer update, timed until the
updated weights are ready; the reported time is the median of the warm
iterations, as for the other rows. One untimed step follows them with a
dense reward (`digit_share`), so that the weight change it reports shows the
update working even when every exact-answer reward was 0.
"""

import functools
import json
import os
import statistics
import time
from typing import Any, Callable, Sequence

import numpy as np

# tunix's pad token: SmolLM2's <|endoftext|>, which no prompt contains (module docstring).
_PAD_TOKEN = "<|endoftext|>"


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
  """max |a - b| over all elements, in float64.

  Args:
    a: array of any shape, e.g. logits [S, V].
    b: array of the same shape.

  Returns:
    The largest absolute elementwise difference.

  Raises:
    ValueError: the shapes differ (the message names both).
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"a has shape {a.shape} but b has shape {b.shape}.")
  return float(np.max(np.abs(a - b)))


def param_delta_norm(before: Sequence[np.ndarray], after: Sequence[np.ndarray]) -> float:
  """The global L2 norm of the change of the parameters, sqrt(sum_i ||after_i - before_i||^2).

  Args:
    before: the parameter arrays before the update, in a fixed order.
    after: the same arrays after it, in the same order and shapes.

  Returns:
    The norm, in float64.

  Raises:
    ValueError: the lists differ in length or an array in shape.
  """
  if len(before) != len(after):
    raise ValueError(f"before has {len(before)} arrays but after has {len(after)}.")
  total = 0.0
  for i, (b, a) in enumerate(zip(before, after)):
    b, a = np.asarray(b, np.float64), np.asarray(a, np.float64)
    if a.shape != b.shape:
      raise ValueError(f"array {i}: before has shape {b.shape} but after has {a.shape}.")
    total += float(np.sum((a - b) ** 2))
  return float(np.sqrt(total))


def mixed_groups(rewards: np.ndarray, *, group: int) -> int:
  """How many groups of `group` consecutive rewards are not all equal.

  A group whose rewards are all equal has GRPO advantages of 0 (METHODS.md
  section 1.1), so it cannot move the weights.

  Args:
    rewards: [B] rewards, the G responses of a prompt in consecutive rows.
    group: G.

  Returns:
    The number of the B / G groups with max != min.

  Raises:
    ValueError: B is not a multiple of `group`.
  """
  rewards = np.asarray(rewards, np.float32)
  if rewards.ndim != 1 or rewards.shape[0] % group:
    raise ValueError(f"rewards has shape {rewards.shape}; expected [B] with B a multiple of "
                     f"group={group}.")
  grouped = rewards.reshape(-1, group)
  return int(np.sum(grouped.max(axis=1) != grouped.min(axis=1)))


def digit_share(text: str) -> float:
  """The share of digits among `text`'s characters (0 for an empty text).

  The reward of one untimed step after the timed ones: dense, so a group's
  rewards differ and its advantages are non-zero even when the benchmark's
  exact-answer reward gave 0 to every response, which shows that tunix's
  update moves the weights.
  """
  return sum(ch.isdigit() for ch in text) / len(text) if text else 0.0


def _model_config(llama_lib: Any, hf_config: dict) -> Any:
  """tunix's Llama3 ModelConfig for the HF config.json of the exported model."""
  return llama_lib.ModelConfig(
      num_layers=hf_config["num_hidden_layers"],
      vocab_size=hf_config["vocab_size"],
      embed_dim=hf_config["hidden_size"],
      hidden_dim=hf_config["intermediate_size"],
      num_heads=hf_config["num_attention_heads"],
      head_dim=hf_config.get("head_dim")
      or hf_config["hidden_size"] // hf_config["num_attention_heads"],
      num_kv_heads=hf_config["num_key_value_heads"],
      rope_theta=hf_config["rope_theta"],
      norm_eps=hf_config["rms_norm_eps"],
      weight_tying=hf_config.get("tie_word_embeddings", False))


def _patch_rope_theta(llama_lib: Any, rope_theta: float) -> None:
  """Makes tunix's Llama attention use `rope_theta` (it calls apply_rope without it)."""
  original = getattr(llama_lib.apply_rope, "func", llama_lib.apply_rope)
  llama_lib.apply_rope = functools.partial(original, rope_theta=rope_theta)


def _logits(model: Any, tokens: np.ndarray) -> np.ndarray:
  """tunix's float32 logits [S, V] for one unpadded sequence of tokens [S]."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  s = len(tokens)
  logits, _ = model(jnp.asarray(tokens[None], jnp.int32), jnp.arange(s)[None], None,
                    jnp.tril(jnp.ones((1, s, s), bool)))
  return np.asarray(logits[0], np.float32)


def _param_arrays(model: Any) -> list[np.ndarray]:
  """The model's parameters as host arrays, in the state's leaf order."""
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  return [np.array(x) for x in jax.tree.leaves(nnx.to_pure_dict(nnx.state(model, nnx.Param)))]


def run(iterations: int, data_dir: str, *, group: int, prompts_per_step: int, new_tokens: int,
        reward_fn: Callable[[list[str], list[str]], list[float]]) -> dict:
  """Times tunix's GRPOLearner on the exported model; returns rl_step.py's row.

  Args:
    iterations: training steps (each on `prompts_per_step` new prompts).
    data_dir: the directory rl_step.py's export worker wrote.
    group: responses per prompt (G).
    prompts_per_step: prompts per iteration.
    new_tokens: tokens generated per response (T).
    reward_fn: (completions, answers) -> rewards, rl_step.py's `_reward`.

  Returns:
    {"framework": "tunix", "iteration_s", "generation_s", "first_iteration_s",
    "logits_max_abs_diff" (vs transformers, RoPE theta patched),
    "logits_max_abs_diff_unpatched", "param_delta_norm", "mixed_reward_groups"
    (groups whose rewards were not all equal: with none, every advantage is 0
    and no update can move the weights), "param_norm"}.

  Raises:
    ValueError: the data directory is incomplete, tunix tokenizes the prompt
      differently from ours, its patched logits are still off, or its updates
      left the weights unchanged although some advantages were non-zero.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from tunix.models.llama3 import model as llama_lib  # pylint: disable=g-import-not-at-top
  from tunix.models.llama3 import params as llama_params  # pylint: disable=g-import-not-at-top
  from tunix.rl import rl_cluster as rl_cluster_lib  # pylint: disable=g-import-not-at-top
  from tunix.rl.grpo import grpo_learner  # pylint: disable=g-import-not-at-top
  from tunix.rl.rollout import base_rollout  # pylint: disable=g-import-not-at-top

  hf_dir = os.path.join(data_dir, "hf")
  for name in ("hf/config.json", "prompts.json", "reference.npz"):
    if not os.path.exists(os.path.join(data_dir, name)):
      raise ValueError(f"--data_dir={data_dir} has no {name}: run the export worker first.")
  with open(os.path.join(hf_dir, "config.json"), encoding="utf-8") as f:
    hf_config = json.load(f)
  with open(os.path.join(data_dir, "prompts.json"), encoding="utf-8") as f:
    exported = json.load(f)
  reference = np.load(os.path.join(data_dir, "reference.npz"))
  records = exported["records"]
  if len(records) < iterations * prompts_per_step:
    raise ValueError(f"{data_dir}/prompts.json holds {len(records)} prompts; "
                     f"{iterations} iterations need {iterations * prompts_per_step}.")

  config = _model_config(llama_lib, hf_config)
  # Auto axis types: see the module docstring. One CPU device, as ours runs.
  mesh = jax.make_mesh((1, 1), ("fsdp", "tp"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)
  model = llama_params.create_model_from_safe_tensors(hf_dir, config, mesh,
                                                      dtype=jax.numpy.float32)
  tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
  tokenizer.pad_token = _PAD_TOKEN
  ids = tokenizer.encode(records[0]["prompt"], add_special_tokens=False)
  if ids != reference["tokens"].tolist():
    raise ValueError("tunix's transformers tokenizes the first prompt differently from ours.")

  unpatched = max_abs_diff(_logits(model, reference["tokens"]), reference["logits"])
  _patch_rope_theta(llama_lib, config.rope_theta)
  patched = max_abs_diff(_logits(model, reference["tokens"]), reference["logits"])
  if patched > 1e-2:
    raise ValueError(f"tunix's logits are {patched:.3g} off transformers' with rope_theta "
                     f"{config.rope_theta}: the model does not match.")
  before = _param_arrays(model)

  rewards = []
  calls = [0]

  def rewarded(prompts, completions, answer, **_):
    del prompts
    calls[0] += 1
    if calls[0] > iterations:  # The untimed check step: see `digit_share`.
      return [digit_share(c) for c in completions]
    out = reward_fn(completions, list(answer))
    rewards.extend(out)
    return out

  prompt_len = exported["prompt_len"]
  cluster = rl_cluster_lib.RLCluster(
      actor=model, reference=None, tokenizer=tokenizer,
      cluster_config=rl_cluster_lib.ClusterConfig(
          role_to_mesh={rl_cluster_lib.Role.ACTOR: mesh, rl_cluster_lib.Role.REFERENCE: mesh,
                        rl_cluster_lib.Role.ROLLOUT: mesh},
          rollout_engine="vanilla", offload_to_cpu=False,
          training_config=rl_cluster_lib.RLTrainingConfig(
              actor_optimizer=optax.adamw(1e-5, weight_decay=0.0),
              eval_every_n_steps=iterations + 2, max_steps=iterations + 1,
              # One update on the whole batch in 2 micro-batches, as ours runs it;
              # one rollout of all 8 x 4 rows.
              mini_batch_size=prompts_per_step, train_micro_batch_size=prompts_per_step // 2,
              rollout_micro_batch_size=prompts_per_step,
              compute_logps_micro_batch_size=prompts_per_step),
          rollout_config=base_rollout.RolloutConfig(
              max_tokens_to_generate=new_tokens, max_prompt_length=prompt_len,
              kv_cache_size=prompt_len + new_tokens, temperature=1.0, top_p=1.0,
              top_k=None)))
  learner = grpo_learner.GRPOLearner(
      rl_cluster=cluster,
      algo_config=grpo_learner.GRPOConfig(
          num_generations=group, num_iterations=1, beta=0.0, epsilon=0.2,
          loss_agg_mode="token-mean"),
      reward_fns=rewarded)

  generation = [0.0]
  generate = cluster.generate

  def timed_generate(*args, **kwargs):
    t0 = time.perf_counter()
    out = generate(*args, **kwargs)
    generation[0] += time.perf_counter() - t0
    return out

  cluster.generate = timed_generate
  times = []
  global_step = learner._run_global_step  # pylint: disable=protected-access

  def timed_global_step(*args, **kwargs):
    t0, gen0 = time.perf_counter(), generation[0]
    global_step(*args, **kwargs)
    jax.block_until_ready(nnx.state(cluster.actor_trainer.model, nnx.Param))
    times.append((time.perf_counter() - t0, generation[0] - gen0))

  learner._run_global_step = timed_global_step  # pylint: disable=protected-access
  batches = [{"prompts": np.array([r["prompt"] for r in chunk]),
              "answer": np.array([r["answer"] for r in chunk])}
             for chunk in (records[i * prompts_per_step:(i + 1) * prompts_per_step]
                           for i in range(iterations + 1))]
  learner.train(batches)
  if len(times) != iterations + 1:
    raise ValueError(f"tunix ran {len(times)} steps; expected {iterations} + 1 check step.")
  times.pop()  # The check step is not timed.

  after = _param_arrays(cluster.actor_trainer.model)
  delta = param_delta_norm(before, after)
  mixed = mixed_groups(np.asarray(rewards), group=group)
  if delta == 0.0:
    raise ValueError("tunix's updates left every weight unchanged, the check step's dense "
                     "reward included.")
  warm = times[2:] or times[-1:]
  return {"framework": "tunix", "iteration_s": statistics.median(t for t, _ in warm),
          "generation_s": statistics.median(g for _, g in warm),
          "first_iteration_s": times[0][0],
          "logits_max_abs_diff": patched, "logits_max_abs_diff_unpatched": unpatched,
          "param_delta_norm": delta, "mixed_reward_groups": mixed,
          "param_norm": float(np.sqrt(sum(np.sum(np.square(b, dtype=np.float64))
                                          for b in before)))}
