"""repro.replay / bin/replay: one step of a finished run, replayed and looked inside.

replay(run, N) copies the newest kept checkpoint before step N into a temporary directory,
trains it to step N-1 with the run's recorded config and task (from the seed if no
checkpoint comes before N), then runs step N, each in a fresh process on the run's device
count (as bin/audit), and says whether step N's loss, batch and parameter fingerprints equal
what trace.jsonl recorded. It also
recomputes step N's loss and gradient on one device from the state before it (a separate
program, for looking inside: the batch's example indices, the loss and metrics, the gradient's
global and per-leaf norms) and measures the update (the parameters after step N less those
before). dump= writes the batch, the gradients and the parameters before and after as .npz.
Nothing is written into the run.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
from pathlib import Path
from typing import Callable, Sequence

import jax
import numpy as np
from flax import nnx

from repro.machine import backend
from repro.proof import audits
from repro.proof import processes
from repro.train import core
from repro.checkpoints import digest
from repro import metrics
from repro.train import rng
from repro.data import shuffle
from repro.data import splits as splits_lib
from repro.train import state as state_lib
from repro.checkpoints import stored as stored_lib
from repro import task as task_lib
from repro.model import trained as trained_lib
from repro.train import warmstart
from repro.config import Config
from repro.errors import ReproError

_TRACED = ("batch", "loss", "params")  # what trace.jsonl records of a step


@dataclasses.dataclass(frozen=True)
class Replayed:
  """Step `step` of `run`, replayed from checkpoint `start` (0: the seed).

  differs: the trace fields ('batch', 'loss', 'params') of the replayed step that differ
  from the run's record (empty: equal to the run).
  """

  run: str
  step: int
  start: int
  indices: list[int]
  loss: float
  metrics: dict[str, float]
  grad_norm: float
  leaf_norms: dict[str, float]
  update_norm: float
  differs: list[str]

  @property
  def equal(self) -> bool:
    return not self.differs


def _check_dump(run: Path, dump: Path) -> None:
  if run in dump.parents:
    raise ReproError(f"--dump {dump} is inside the replayed run: pass a path outside it")
  if not dump.parent.is_dir() or not os.access(dump.parent, os.W_OK | os.X_OK):
    raise ReproError(f"--dump {dump}: {dump.parent} is not a directory this process can write: "
                     f"pass a file in an existing, writable directory")


def _trace(run: Path, step: int) -> dict:
  records = {r["step"]: r for r in metrics.read(run / metrics.TRACE_FILENAME) if "step" in r}
  if step < 1 or step not in records:
    last = max(records, default=0)
    raise ReproError(f"{run} has no step {step} in its {metrics.TRACE_FILENAME}: pass "
                     f"--step=N with 1 <= N <= {last}")
  return records[step]


def replay(run: str | Path, step: int, dump: str | Path | None = None,
           task: task_lib.Task | None = None, log: Callable[[str], None] = print) -> Replayed:
  """Replays step `step` of `run` (see the module doc); ReproError (one line) on bad input."""
  run, steps = stored_lib.run_steps(run)
  processes.check_shared_cache(run)
  if dump:
    _check_dump(run, Path(dump).expanduser().absolute())
  recorded = _trace(run, step)
  start = max((s for s in steps if s < step), default=0)
  target = stored_lib.find(run, min((s for s in steps if s >= step), default=steps[-1]))
  config = Config.from_dict(target.config)
  backend.ensure(config.cpu_threads, config.micro_shards)  # the norms below use the run's pool
  if task is None:
    task = task_lib.recorded(config)
  log(f"replaying step {step} of {run} from {'checkpoint ' + str(start) if start else 'the seed'}"
      f" on {_devices(audits.devices_used(target))}, in a fresh process")
  with processes.scratch("repro-replay-") as root:
    out = root / "run"
    out.mkdir()
    if start:
      shutil.copytree(run / str(start), out / str(start))
    processes.save_task(task, root / "task.json")
    train = functools.partial(_train, config.replace(output=str(out)), root,
                              audits.devices_used(target), processes.main_file(task))
    if step - 1 > start:
      train(step - 1)
    before = _state_before(config, task, out, step)
    train(step)
    replayed = _trace(out, step)
    after_state = trained_lib.restore(out, step, task).state
  inside = _inside(before, after_state, task, config, step, dump)
  if dump:
    log(f"wrote the batch, gradients and parameters before and after to {dump}")
  differs = [k for k in _TRACED if replayed.get(k) != recorded.get(k)]
  return Replayed(run=str(run), step=step, start=start, differs=differs, **inside)


def _devices(count: int) -> str:
  return f"{count} device" + ("s" if count > 1 else "")


def _train(config: Config, root: Path, devices: int, main: str | None, steps: int) -> None:
  failed = audits.train_fresh(config.replace(max_steps=steps), root, f"to-{steps}", devices, main)
  if failed:
    raise ReproError(f"replaying: training to step {steps} failed: {failed}")


def _state_before(config: Config, task: task_lib.Task, out: Path, step: int):
  """(built, state) of the train state after step - 1 (a checkpoint in `out`, or the seed's)."""
  if step > 1:
    restored = trained_lib.restore(out, step - 1, task)
    return restored.built, restored.state
  warm = warmstart.WarmStart.of(config.init_from, task) if config.init_from else None
  built = state_lib.build(task, config, rng.streams(config.seed), 1, None, warm)
  return built, built.state


def _inside(before, after_state, task: task_lib.Task, config: Config, step: int,
            dump: str | Path | None) -> dict:
  """The batch, loss, metrics, gradient and update of `step`, recomputed on one device."""
  built, state = before
  train, keys = _train_split(task, config), rng.streams(config.seed)
  idx = np.asarray(shuffle.batch_indices(keys["shuffle"], step - 1, len(train),
                                         config.batch_size))
  epoch = (step - 1) // shuffle.steps_per_epoch(len(train), config.batch_size)
  batch = _augmented(task, keys, train.gather(idx), idx, epoch)  # as the step saw it
  model = nnx.merge(built.graphdef, state)["model"]
  model.train()
  model_def, params, streams, other = nnx.split(model, nnx.Param, nnx.RngState, ...)
  shard = core.shard_fn(task, model_def, params, streams, other)
  loss, found, grads, _ = jax.jit(shard)(batch, rng.step_key(keys, step - 1))
  grads = digest.named_leaves(nnx.to_pure_dict(grads))
  old = digest.named_leaves(nnx.to_pure_dict(params))
  new = digest.named_leaves(nnx.to_pure_dict(nnx.state(
      nnx.merge(built.graphdef, after_state)["model"], nnx.Param)))
  norm = lambda arrays: float(np.sqrt(sum(np.sum(np.square(a, dtype=np.float64))
                                          for a in arrays)))
  if dump:
    np.savez(Path(dump).expanduser(), indices=idx, **{f"batch/{k}": v for k, v in batch.items()},
             **{f"grad/{k}": v for k, v in grads.items()},
             **{f"before/{k}": v for k, v in old.items()},
             **{f"after/{k}": v for k, v in new.items()})
  return {"indices": idx.tolist(), "loss": float(loss),
          "metrics": {k: float(v) for k, v in found.items()},
          "grad_norm": norm(grads.values()),
          "leaf_norms": {k: norm([v]) for k, v in grads.items()},
          "update_norm": norm(new[k] - old[k] for k in old)}


def _train_split(task: task_lib.Task, config: Config):
  data = task_lib.guarded("data()", task, task.data)
  return splits_lib.prepare(data, task_lib.task_name(task), config.validation_examples,
                            config.batch_size).train


def _augmented(task: task_lib.Task, keys: dict, batch: dict, idx: np.ndarray, epoch: int) -> dict:
  if not task_lib.augments(task):
    return batch
  return jax.jit(functools.partial(core.augment_batch, task))(keys, batch, idx, epoch)


def augmented(run: str | Path, example: int | Sequence[int], epoch: int,
              task: task_lib.Task | None = None) -> dict[str, np.ndarray]:
  """The training example at position `example` of the train split as the run's steps of
  `epoch` (0-based) saw it: through the task's augment with its key of (seed, epoch, example);
  as stored if the task does not augment. A sequence of positions gives them stacked.
  ReproError (one line) on bad input."""
  run, steps = stored_lib.run_steps(run)
  config = Config.from_dict(stored_lib.find(run, steps[-1]).config)
  backend.ensure(config.cpu_threads, config.micro_shards)  # as the run's steps computed it
  if task is None:
    task = task_lib.recorded(config)
  train = _train_split(task, config)
  idx = np.array(example if isinstance(example, Sequence) else [example], np.int32).ravel()
  if not all(0 <= i < len(train) for i in idx.tolist()) or epoch < 0:
    raise ReproError(f"example {example} of epoch {epoch}: pass 0 <= example < {len(train)} "
                     f"(the train split) and epoch >= 0")
  found = _augmented(task, rng.streams(config.seed), train.gather(idx), idx, epoch)
  pick = (lambda v: np.asarray(v)) if isinstance(example, Sequence) else (
      lambda v: np.asarray(v[0]))
  return {name: pick(value) for name, value in found.items()}


def report(r: Replayed, shown: int = 8) -> str:
  """The lines bin/replay prints."""
  verdict = ("equal to the run (its loss, batch and parameter fingerprints)" if r.equal else
             f"DIFFERENT from the run: its {', '.join(r.differs)} differ from trace.jsonl")
  head = ", ".join(map(str, r.indices[:16])) + (", ..." if len(r.indices) > 16 else "")
  extra = "".join(f", {k} {v:.6g}" for k, v in sorted(r.metrics.items()))
  lines = [f"replayed step {r.step}: {verdict}",
           f"  batch: {len(r.indices)} examples, positions in the train split: {head}",
           f"  loss {r.loss:.6g}{extra} (recomputed on one device)",
           f"  gradient global norm {r.grad_norm:.6g}; update norm {r.update_norm:.6g}",
           "  largest gradient norms:"]
  ranked = sorted(r.leaf_norms.items(), key=lambda item: -item[1])[:shown]
  width = max((len(name) for name, _ in ranked), default=0)
  lines += [f"    {name:<{width}}  {value:.6g}" for name, value in ranked]
  return "\n".join(lines)
