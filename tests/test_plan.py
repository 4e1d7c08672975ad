"""The TPU planner (experiments/plan.py) compiles the trainer's programs.

It runs in a subprocess with the interpreter of `.venv-tpu` (the project's
venv + libtpu, `make setup-tpu`), so the CPU tests' JAX never loads libtpu.
Skipped only when that venv does not exist.
"""

import json
import os
import subprocess

import pytest

from rlvr_jax.models import config as config_lib

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TPU_PYTHON = os.path.join(_ROOT, ".venv-tpu", "bin", "python")
_GIB = 1024 ** 3

pytestmark = pytest.mark.skipif(
    not os.path.exists(_TPU_PYTHON),
    reason=f"{_TPU_PYTHON} missing (make setup-tpu installs libtpu there)")


def _plan(*flags: str) -> dict:
  """Runs the planner; returns its last stdout line (the JSON summary)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=_ROOT)
  proc = subprocess.run([_TPU_PYTHON, "-m", "experiments.plan", *flags], cwd=_ROOT,
                        env=env, capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


# tiny preset (V=49152, D=256, F=512, L=4, N=4, K=2, Dh=64, tied) on v5e:2x2:
# 4 chips, mesh data=1 fsdp=4 tensor=1; 4 prompts x 8 = 32 rows, 8 per chip;
# P = T = 128, S = 256.
_TINY = ("--model=tiny", "--topology=v5e:2x2", "--config.rl.prompts_per_batch=4",
         "--config.rl.group_size=8", "--config.rl.max_prompt_len=128",
         "--config.rl.max_new_tokens=128", "--config.rl.micro_batches=2",
         "--config.train.logprob_chunk=64")


@pytest.fixture(scope="module")
def tiny_plan() -> dict:
  return _plan(*_TINY)


def test_tiny_programs_compile_and_fit(tiny_plan):
  assert tiny_plan["fits"] is True
  assert tiny_plan["hbm_bytes"] == 16 * _GIB  # v5e: 16 GiB per chip
  assert tiny_plan["chips"] == 4
  assert tiny_plan["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  assert set(tiny_plan["programs"]) == {"generate", "stats", "delta", "update"}
  for program in tiny_plan["programs"].values():
    assert 0 < program["bytes_per_device"] < 16 * _GIB
    assert program["flops"] > 0


def _tiny_argument_bytes() -> dict[str, int]:
  """Per-chip argument bytes of the _TINY programs on 4 chips (fsdp=4), by hand."""
  # Parameters (float32) per chip: the embed dim D=256 is split over fsdp=4
  # (64 per chip); vocab/heads/mlp go to tensor=1 (not split); layers stacked.
  embed = 49152 * 64 * 4  # [V, D/4] = 12,582,912
  per_layer = (64 * 4 * 64  # q [D/4, N, Dh]
               + 2 * 64 * 2 * 64  # k, v [D/4, K, Dh]
               + 4 * 64 * 64  # o [N, Dh, D/4]
               + 2 * 64 * 512  # gate, up [D/4, F]
               + 512 * 64  # down [F, D/4]
               + 2 * 64)  # attn_norm, mlp_norm [D/4]
  params = embed + 4 * per_layer * 4 + 64 * 4  # + final_norm [D/4]
  assert params == 14_944_512
  rest = 0  # no non-parameter state: RoPE frequencies are host constants
  rows = 8  # 32 rows / 4 chips
  tokens, input_mask = rows * 256 * 4, rows * 256 * 1  # [8, S] int32, bool
  per_token = rows * 128 * 4  # one [8, T] float32 array
  adam = 2 * params + 2 * 4  # mu, nu like the params; adam and schedule counts int32
  # generate: U = 4 distinct prompts (1 per chip) [1, P] int32 + bool,
  # source int32 [8], row_valid bool [8], key uint32[2], temperature, top_p.
  generate = params + rest + 128 * 4 + 128 + rows * 4 + rows + 8 + 4 + 4
  return {
      "generate": generate,
      "stats": params + rest + tokens + input_mask,
      "delta": rows * 128 * 256 * 4 + 3 * per_token,  # hidden [8, T, D] + 3 x [8, T]
      "update": params + rest + adam + tokens + input_mask + 3 * per_token,
  }


def test_tiny_argument_bytes_are_the_sharded_sizes(tiny_plan):
  expected = _tiny_argument_bytes()
  programs = tiny_plan["programs"]
  for name, value in expected.items():
    assert programs[name]["sharded_argument_bytes"] == value, name
    # XLA's count pads the last two dims of small arrays to TPU tiles.
    assert programs[name]["argument_bytes"] >= value, name
  # DelTA's inputs are tile-aligned ([8, 128] float32 tiles): no padding.
  assert programs["delta"]["argument_bytes"] == expected["delta"]


def test_v4_slices_have_one_device_per_chip():
  """v4 runs in megacore mode: one JAX device per chip (2 TensorCores), 32 GiB HBM.

  libtpu's default v4 description has a device per TensorCore, which JAX's
  mesh utilities refuse ("requires one device per chip").
  """
  code = ("import json; from rlvr_jax.training import plan; print(json.dumps("
          "{t: [[list(d.coords), d.num_cores] for d in plan.topology_devices(t)]"
          " for t in ['v4:2x2x1', 'v4:2x2x2', 'v4:4x4x4']}))")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=_ROOT)
  proc = subprocess.run([_TPU_PYTHON, "-c", code], cwd=_ROOT, env=env, capture_output=True,
                        text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  devices = json.loads(proc.stdout.strip().splitlines()[-1])
  for topology, chips in (("v4:2x2x1", 4), ("v4:2x2x2", 8), ("v4:4x4x4", 64)):
    coords = [tuple(c) for c, _ in devices[topology]]
    assert len(coords) == len(set(coords)) == chips, topology  # distinct chips
    assert {cores for _, cores in devices[topology]} == {2}, topology


def test_tiny_on_v4_compiles_with_the_v4_hbm():
  # v4:2x2x1 is 4 chips like v5e:2x2: the same mesh and per-chip arguments.
  out = _plan(*[f for f in _TINY if not f.startswith("--topology")], "--topology=v4:2x2x1")
  assert out["fits"] is True
  assert out["hbm_bytes"] == 32 * _GIB  # v4: 32 GiB per chip
  assert out["chips"] == 4
  assert out["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
  for name, value in _tiny_argument_bytes().items():
    assert out["programs"][name]["sharded_argument_bytes"] == value, name
    assert out["programs"][name]["flops"] > 0, name


def test_8b_without_fsdp_does_not_fit_and_names_the_largest_array():
  model = config_lib.get_preset("qwen3_8b")
  out = _plan("--model=qwen3_8b", "--topology=v5e:2x2", "--programs=update",
              "--config.mesh.data=-1", "--config.mesh.fsdp=1",
              "--config.rl.prompts_per_batch=4", "--config.rl.group_size=1",
              "--config.rl.max_prompt_len=128", "--config.rl.max_new_tokens=128",
              "--config.rl.micro_batches=1")
  assert out["fits"] is False
  update = out["programs"]["update"]
  assert update["bytes_per_device"] > 16 * _GIB
  # Replicated float32 params + Adam moments: >= 3 x 4 bytes x 8.19e9 params.
  assert update["argument_bytes"] >= 3 * 4 * 8_000_000_000
  # Every array is whole on every chip; the largest is a stacked MLP kernel,
  # gate/up [L, D, F] or down [L, F, D] (or an Adam moment of one):
  # 36 * 4096 * 12288 * 4 bytes = 6.75 GiB.
  l, d, f = model.num_layers, model.hidden_size, model.intermediate_size
  assert (f"[{l}, {d}, {f}]" in update["largest_argument"]
          or f"[{l}, {f}, {d}]" in update["largest_argument"]), update["largest_argument"]


def test_tiny_lora_update_holds_adapters_and_a_bf16_base():
  """LoRA rank 8, bf16 compute: the frozen base in bf16, adapters + Adam in float32."""
  out = _plan(*_TINY, "--config.model.lora_rank=8", "--config.model.dtype=bfloat16",
              "--programs=merge,generate,stats,update")
  assert out["fits"] is True and out["lora_rank"] == 8
  assert set(out["programs"]) == {"merge", "generate", "stats", "update"}
  base = 14_944_512 // 2  # the f32 parameters per chip above, in bf16
  # Adapters per layer per chip (elements; D=256 split over fsdp=4 -> 64,
  # every other axis whole): A [in, r], B [r, out], r = 8.
  per_layer = (64 * 8 + 8 * 4 * 64  # q: A [D/4, r], B [r, N, Dh]
               + 2 * (64 * 8 + 8 * 2 * 64)  # k, v: B [r, K, Dh]
               + 4 * 64 * 8 + 8 * 64  # o: A [N, Dh, r], B [r, D/4]
               + 2 * (64 * 8 + 8 * 512)  # gate, up: B [r, F]
               + 512 * 8 + 8 * 64)  # down: A [F, r], B [r, D/4]
  adapters = 4 * per_layer * 4  # L = 4 layers, float32
  assert adapters == 352_256
  rows = 8
  tokens, input_mask, per_token = rows * 256 * 4, rows * 256, rows * 128 * 4
  expected = {
      "merge": base + adapters,  # frozen base + adapters -> merged weights
      # the sampler's merged bf16 weights + its inputs (as in the full run)
      "generate": base + 128 * 4 + 128 + rows * 4 + rows + 8 + 4 + 4,
      "stats": base + adapters + tokens + input_mask,
      # Adam's mu, nu over the adapters only, + 2 int32 counts.
      "update": base + adapters + (2 * adapters + 8) + tokens + input_mask + 3 * per_token,
  }
  for name, value in expected.items():
    assert out["programs"][name]["sharded_argument_bytes"] == value, name
