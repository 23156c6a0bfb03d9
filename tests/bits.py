"""Bitwise comparison of saved states, as a user would do it with Orbax."""

from __future__ import annotations

from pathlib import Path

from repro.checkpoints import store as checkpoint
from repro.checkpoints import digest
from repro.proof import verify


def restore_state(step_dir: str | Path) -> dict:
  """The 'state' item of a checkpoint step, restored with StandardCheckpointer.

  Onto this process's device, with a template from the item's metadata, so
  that checkpoints written on other device counts restore too.
  """
  return checkpoint.restore_state_item(Path(step_dir).absolute() / "state")


def assert_bitwise_equal(a: dict, b: dict) -> None:
  leaves_a, leaves_b = digest.named_leaves(a), digest.named_leaves(b)
  assert sorted(leaves_a) == sorted(leaves_b)
  for name in leaves_a:
    x, y = leaves_a[name], leaves_b[name]
    assert x.dtype == y.dtype and x.shape == y.shape, name
    assert x.tobytes() == y.tobytes(), f"leaf {name} differs"


def differing_leaves(a: dict, b: dict) -> list[str]:
  """Names of the leaves whose bits differ, or that only one of the states has."""
  leaves_a, leaves_b = digest.named_leaves(a), digest.named_leaves(b)
  return sorted(n for n in set(leaves_a) | set(leaves_b)
                if n not in leaves_a or n not in leaves_b
                or leaves_a[n].tobytes() != leaves_b[n].tobytes())


def read_losses(run_dir: str | Path) -> bytes:
  return (Path(run_dir) / "metrics.jsonl").read_bytes()


def assert_same_run(a, b) -> None:
  """Final state bitwise equal, and metrics.jsonl and trace.jsonl byte for byte."""
  a, b = Path(a), Path(b)
  comparison = verify.compare(a, b)
  assert comparison.identical, verify.report(comparison)
  final = max(int(p.name) for p in a.iterdir() if p.name.isdigit())
  assert_bitwise_equal(restore_state(a / str(final)), restore_state(b / str(final)))
  assert read_losses(a) == read_losses(b)
  assert (a / "trace.jsonl").read_bytes() == (b / "trace.jsonl").read_bytes()
