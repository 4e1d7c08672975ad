r"""Compiles a run's programs for a TPU slice from this host: does it fit?

  python -m experiments.plan --model=qwen3_8b --topology=v5e:8x8
  python -m experiments.plan --model=qwen3_1_7b --topology=v5p:2x2x1 \
      --config.rl.micro_batches=4
  python -m experiments.plan --model=llama3_1_8b --topology=v5e:2x2 \
      --config=experiments/configs/default.py --config.model.dtype=bfloat16

Needs libtpu (`pip install "jax[tpu]==<the installed jax version>"`, best in
its own venv: `make setup-tpu`); no TPU and no weights. For each of the
trainer's programs (the sampler's generate, the statistics pass, DelTA, the
update step) it prints per-device argument / output / temp / total bytes
against the chip's HBM, FLOPs and a verdict; for a program that does not fit,
its largest arrays and the flags that shrink them. The last line is one JSON
object with `fits`, `hbm_bytes` (per chip) and `programs`
({name: {bytes_per_device, flops, ...}}). Exit status 0 either way.
"""

import os

from absl import app
from absl import flags
from ml_collections import config_flags

from rlvr_jax.models import config as config_lib
from rlvr_jax.training import plan as plan_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "configs", "plan.py"),
    "Run config (any trainer config file); override with --config.<path>=<value>.")
_MODEL = flags.DEFINE_enum("model", "qwen3_8b", sorted(config_lib.PRESETS),
                           "Model preset (rlvr_jax/models/config.py).")
_TOPOLOGY = flags.DEFINE_string("topology", "v5e:8x8",
                                "TPU slice: v4:AxBxC, v5e:AxB, v5p:AxBxC, v6e:AxB.")
_PROGRAMS = flags.DEFINE_list("programs", [],
                              "Compile only these (generate, stats, delta, update; merge with LoRA).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  text, out = plan_lib.plan(_CONFIG.value, preset=_MODEL.value, topology=_TOPOLOGY.value,
                            names=_PROGRAMS.value or None)
  print(text)
  print(plan_lib.to_json(out), flush=True)


if __name__ == "__main__":
  app.run(main)
