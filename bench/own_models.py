"""Your own model at full speed: repro vs the plain per-step nnx.jit loop, side by side.

    python bench/own_models.py [--rounds=2] [--steps=100] [--out=bench/results/own_models.json]

For each model, each contender in a fresh process, alternating rounds, the
fastest of each kept (best of --rounds):
  repro  repro.run with the default --program=auto, device-resident data;
         ms a step over --steps steps after a first (compiling) chunk of the
         same length, as timings.jsonl reports it (Result.ms_step).
  loop   the Flax tutorial's loop: nnx.Optimizer, an @nnx.jit train step over
         batches gathered on the host in a random order, the loss read back at
         the end; ms a step over --steps steps after 10 warm-up steps.
  article_loop (with --contenders) the source article's loop: the same step,
         the loss read back every step for its progress bar.
The loops run with XLA's own defaults (the backend settings the process was
started with), as a Flax user's would; repro with its own (repro.machine.backend:
a fixed thread pool, convolutions on Eigen).
Models (the same model, loss and optimizer on both sides, batch 64):
  article    the source article's DigitClassifier as written (nnx.Conv), Adam
  bn_dropout nnx.Conv + BatchNorm + Dropout + max pooling, clip + AdamW
  resnet     the ResNet example (repro.tasks.resnet), nnx.Conv + BatchNorm, without
             its augmentation (the loop has none; bench/augment.py measures it)
  charlm     the transformer example (repro.tasks.charlm, its default size)
  strided    a 5x5 stride-2 convolution and a ConvTranspose (an autoencoder-ish
             classifier), Adam
Reports repro / loop per model (target <= 1.0). Timings on 2 shared cores are
noisy: compare the ratios of one run, not absolute times across runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
# The backend settings this process was started with, before `import repro` sets
# its own (repro.machine.backend): the plain loops run with them, as a Flax user's would.
STARTED_WITH = {name: os.environ.get(name) for name in ("XLA_FLAGS", "PJRT_NPROC")}

BATCH = 64
MODELS = ("article", "bn_dropout", "resnet", "charlm", "strided")


def _tasks():
  """{name: the task} (imports jax: only in the measuring processes)."""
  import optax
  from flax import nnx
  from repro.tasks.charlm import CharLM
  from repro.tasks.cnn import CNN
  from repro.tasks.images import ImageClassifier
  from repro.tasks.resnet import ResNet

  class BnDropoutNet(nnx.Module):
    def __init__(self, rngs):
      self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
      self.bn1 = nnx.BatchNorm(32, rngs=rngs)
      self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
      self.bn2 = nnx.BatchNorm(64, rngs=rngs)
      self.dropout = nnx.Dropout(0.25, rngs=rngs)
      self.linear1 = nnx.Linear(7 * 7 * 64, 128, rngs=rngs)
      self.linear2 = nnx.Linear(128, 10, rngs=rngs)

    def __call__(self, x):
      x = nnx.max_pool(nnx.relu(self.bn1(self.conv1(x / 255))), (2, 2), strides=(2, 2))
      x = nnx.max_pool(nnx.relu(self.bn2(self.conv2(x))), (2, 2), strides=(2, 2))
      x = self.dropout(x.reshape(x.shape[0], -1))
      return self.linear2(self.dropout(nnx.relu(self.linear1(x))))

  class StridedNet(nnx.Module):
    def __init__(self, rngs):
      self.down = nnx.Conv(1, 32, kernel_size=(5, 5), strides=(2, 2), rngs=rngs)
      self.up = nnx.ConvTranspose(32, 16, kernel_size=(3, 3), strides=(2, 2), rngs=rngs)
      self.head = nnx.Linear(28 * 28 * 16, 10, rngs=rngs)

    def __call__(self, x):
      x = nnx.relu(self.up(nnx.relu(self.down(x / 255))))
      return self.head(x.reshape(x.shape[0], -1))

  @dataclasses.dataclass
  class BnDropout(ImageClassifier):
    name = "bn_dropout"

    def model(self, rngs):
      return BnDropoutNet(rngs)

    def optimizer(self, learning_rate):
      return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(learning_rate))

  @dataclasses.dataclass
  class Strided(ImageClassifier):
    name = "strided"

    def model(self, rngs):
      return StridedNet(rngs)

  from common import licences_file
  licences = licences_file()
  return {"article": CNN(), "bn_dropout": BnDropout(), "resnet": ResNet(augment_images=False),
          "charlm": CharLM(text=str(licences)), "strided": Strided()}


def measure_repro(task, steps: int) -> dict:
  import repro
  out = Path(tempfile.mkdtemp()) / "run"
  config = repro.Config(output=str(out), batch_size=BATCH, max_steps=2 * steps,
                        chunk_steps=steps, checkpoint_every=10**6, progress=False)
  result = repro.run(config, task=task, log=lambda _: None)
  chosen = json.loads((out / "config.json").read_text())["program"]
  return {"ms_step": result.ms_step, "program": chosen}


def measure_loop(task, steps: int) -> dict:
  import jax
  import numpy as np
  from common import tutorial_step
  train = task.data().train
  model, optimizer, train_step = tutorial_step(task)
  n = len(next(iter(train.values())))
  order = np.random.default_rng(0).permutation(n)
  batch_at = lambda i: {k: v[order[i * BATCH:(i + 1) * BATCH]] for k, v in train.items()}
  for i in range(10):
    jax.block_until_ready(train_step(model, optimizer, batch_at(i)))
  start = time.perf_counter()
  for i in range(10, 10 + steps):
    loss = train_step(model, optimizer, batch_at(i))
  float(loss)
  return {"ms_step": 1000 * (time.perf_counter() - start) / steps}


def jax_defaults() -> None:
  """XLA's own backend settings for this process (as started), undoing `import repro`'s."""
  from repro.machine import backend
  assert not backend.started(), "a JAX backend started before the plain loop's settings"
  for name, value in STARTED_WITH.items():
    if value is None:
      os.environ.pop(name, None)
    else:
      os.environ[name] = value


def measure_article_loop(task, steps: int) -> dict:
  """The source article's loop (bench/common.py): the loss read back every step."""
  from common import measure_loop as article_loop
  train = {k: v[:BATCH * (steps + 1)] for k, v in task.data().train.items()}
  return {"ms_step": article_loop(task, train, BATCH)["step_ms"]}


CONTENDERS = {"repro": measure_repro, "loop": measure_loop, "article_loop": measure_article_loop}


def one(model: str, contender: str, steps: int) -> None:
  """Measures one (model, contender) in this process and prints its JSON line."""
  task = _tasks()[model]
  if contender != "repro":
    jax_defaults()
  measured = CONTENDERS[contender](task, steps)
  print(json.dumps({"model": model, "contender": contender, **measured}), flush=True)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--contenders", default="repro,loop",
                      help="of " + ",".join(CONTENDERS) + " (article_loop: the source "
                      "article's loop, the loss read every step)")
  parser.add_argument("--out", default=str(HERE / "results" / "own_models.json"))
  parser.add_argument("--one", nargs=2, metavar=("MODEL", "CONTENDER"), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one:
    return one(*args.one, args.steps)
  from tqdm import tqdm
  models = args.models.split(",")
  contenders = args.contenders.split(",")
  plan = [(r, m, c) for r in range(args.rounds) for m in models
          for c in (contenders if r % 2 == 0 else contenders[::-1])]
  runs: dict = {}
  from common import in_fresh_process
  for _, model, contender in tqdm(plan, desc="measuring", unit="process"):
    line = in_fresh_process(__file__, "--one", model, contender, f"--steps={args.steps}")
    runs.setdefault(model, {}).setdefault(contender, []).append(line)
  report = {"batch": BATCH, "steps": args.steps, "rounds": args.rounds, "models": {}}
  for model, by in runs.items():
    best = {c: min(r["ms_step"] for r in rows) for c, rows in by.items()}
    report["models"][model] = {
        **{f"{c}_ms": ms for c, ms in best.items()},
        **{f"repro_over_{c}": best["repro"] / ms for c, ms in best.items() if c != "repro"},
        "program": by["repro"][0]["program"], "all": by}
  from common import write_report
  write_report(report, args.out)


if __name__ == "__main__":
  main()
