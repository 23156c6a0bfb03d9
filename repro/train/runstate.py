"""The run state, exactly what a checkpoint holds, and what a chunk boundary shows.

RunState is the whole of a run's progress: a run restored from it continues
bit for bit. StepInfo is what the phases of a boundary produce from it, handed
read-only to the user's hooks (repro.Hook).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from repro.machine import parallel
from repro.train.control import ControlState
from repro.metrics import VAL


@dataclasses.dataclass(frozen=True)
class RunState:
  """Exactly what a checkpoint holds.

  Attributes:
    step: global steps done; the data order is a function of it alone.
    arrays: the nnx.State of {'model', 'optimizer'} on the run's device(s).
    control: the decisions taken on evaluations (best, early stop, plateau).
  """

  step: int
  arrays: Any
  control: ControlState

  def replace(self, **changes: Any) -> "RunState":
    return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class Chunk:
  """The steps first+1 .. last that one chunk ran, and their trace on the host.

  trace: 'loss', 'batch' and 'params' (per-step values and fingerprints) and
  'metrics' ({name: per-step values}), cut to the steps that ran. A program
  gives each as one array over the chunk's steps, or as a list of per-step
  values.
  """

  first: int
  last: int
  trace: dict
  seconds: float = 0.0  # from its dispatch to its trace on the host (speed only)

  @classmethod
  def of(cls, first: int, last: int, device_trace: dict, started: float = 0.0) -> "Chunk":
    """The chunk's trace brought to the host: its one host sync. started: perf_counter()
    when it was dispatched."""
    n, host = last - first, parallel.to_host_tree(device_trace)
    cut = lambda x: np.stack(x[:n]) if isinstance(x, list) else x[:n]  # per-step entries
    trace = {k: ({m: cut(x) for m, x in v.items()} if k == "metrics" else cut(v))
             for k, v in host.items()}
    return cls(first=first, last=last, trace=trace,
               seconds=time.perf_counter() - started if started else 0.0)

  @property
  def losses(self) -> list[float]:
    return [float(x) for x in self.trace["loss"]]

  @property
  def steps(self) -> range:
    return range(self.first + 1, self.last + 1)


@dataclasses.dataclass(frozen=True)
class StepInfo:
  """What a chunk boundary produced; hooks read it and never change the run.

  Attributes:
    state: the RunState after the chunk and this boundary's decisions.
    chunk: the chunk that ended here.
    evaluation: this step's validation record ({'step', 'val_*', 'lr'}), or None.
    test: the test metrics ({'test_*'}) once the run reached its end, else {}.
    checkpoint: whether a checkpoint of this step is saved at this boundary.
  """

  state: RunState
  chunk: Chunk
  evaluation: dict | None = None
  test: dict = dataclasses.field(default_factory=dict)
  checkpoint: bool = False

  @property
  def step(self) -> int:
    return self.state.step

  @property
  def loss(self) -> float:
    return self.chunk.losses[-1]

  @property
  def metrics(self) -> dict[str, float]:
    """'loss' of the last step, then this boundary's 'val_*' and 'test_*'."""
    validation = {k: v for k, v in (self.evaluation or {}).items() if k.startswith(VAL)}
    return {"loss": self.loss, **validation, **self.test}


class Hook:
  """A read-only hook at chunk boundaries: override at_boundary (and close).

  every: also end a chunk at every multiple of this step (0: at repro's own
  boundaries only). Chunk lengths never change the bits.
  """

  every: int = 0

  def at_boundary(self, info: StepInfo) -> None:
    """Called once the boundary at info.step has logged and saved."""

  def close(self) -> None:
    """Releases what the hook holds (also after an error)."""
