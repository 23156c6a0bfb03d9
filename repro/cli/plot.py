"""Loss and validation curves of one or more runs, overlaid, with checkpoints and resumes marked."""

from __future__ import annotations

import json
from pathlib import Path

from absl import flags

from repro import metrics
from repro.cli import common
from repro.cli.common import FLAGS
from repro.errors import ReproError


def validation_metric(run_dir: Path, records: list[dict]) -> str | None:
  """The run's monitored metric (config.json), else val_accuracy, else val_loss, if logged."""
  try:
    monitor = json.loads((run_dir / "config.json").read_text()).get("monitor")
  except (OSError, ValueError):
    monitor = None
  logged = {k for r in records for k in r if k.startswith(metrics.VAL)}
  return next((m for m in (monitor, "val_accuracy", "val_loss") if m in logged), None)


def _checkpoints(events: list[dict]) -> list[int]:
  """The steps saved and not discarded since (a half-written or a damaged one), in order."""
  kept: set[int] = set()
  for event in events:
    if event.get("event") == "checkpoint":
      kept.add(event["step"])
    elif event.get("event") == "discarded":
      kept.discard(event["step"])
  return sorted(kept)


def _series(run_dir: Path) -> dict:
  records = metrics.read(run_dir / metrics.FILENAME)
  events = metrics.read(run_dir / metrics.EVENTS_FILENAME)
  metric = validation_metric(run_dir, records)
  return {
      "loss": [(r["step"], r["loss"]) for r in records if "loss" in r],
      "metric": metric,
      "validation": [(r["step"], r[metric]) for r in records if metric in r],
      "checkpoints": _checkpoints(events),
      "resumes": sorted({e["step"] for e in events if e.get("event") == "resume"}),
  }


def plot(runs: list[str | Path], out: str | Path) -> Path:
  """Writes a PNG of the runs' training loss (and monitored validation metric, if any) to `out`.

  Checkpoints are marked with dots on each loss curve, resume points with
  dashed vertical lines in the run's colour.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  series = {}
  for run in runs:
    run_dir = Path(run).expanduser()
    if not (run_dir / metrics.FILENAME).is_file():
      raise ReproError(f"{run_dir} is not a repro run directory (no {metrics.FILENAME}): "
                       f"pass run directories")
    series[run_dir] = _series(run_dir)
  with_val = any(s["validation"] for s in series.values())
  fig, axes = plt.subplots(1, 2 if with_val else 1, figsize=(12 if with_val else 7, 4.5),
                           squeeze=False)
  ax_loss = axes[0][0]
  styles = ["-", "--", ":", "-."]
  for i, (run_dir, s) in enumerate(series.items()):
    steps, losses = zip(*s["loss"]) if s["loss"] else ((), ())
    line, = ax_loss.plot(steps, losses, styles[i % len(styles)], lw=1.2 if i == 0 else 1.6,
                         alpha=0.85, label=run_dir.name)
    by_step = dict(s["loss"])
    marks = [c for c in s["checkpoints"] if c in by_step]
    ax_loss.plot(marks, [by_step[c] for c in marks], "o", color=line.get_color(), ms=4,
                 label=f"{run_dir.name}: checkpoints")
    for r in s["resumes"]:
      ax_loss.axvline(r, color=line.get_color(), ls="--", lw=1,
                      label=f"{run_dir.name}: resumed at {r}")
    if with_val and s["validation"]:
      vs, va = zip(*s["validation"])
      axes[0][1].plot(vs, va, styles[i % len(styles)] + "o", ms=3, color=line.get_color(),
                      label=f"{run_dir.name}: {s['metric']}")
  ax_loss.set_yscale("log")
  ax_loss.set_xlabel("global step")
  ax_loss.set_ylabel("training loss")
  ax_loss.set_title("training loss")
  ax_loss.legend(fontsize=8)
  if with_val:
    axes[0][1].set_xlabel("global step")
    names = sorted({s["metric"] for s in series.values() if s["metric"]})
    axes[0][1].set_ylabel(", ".join(names))
    axes[0][1].set_title("validation")
    axes[0][1].legend(fontsize=8)
  fig.tight_layout()
  out = Path(out).expanduser()
  try:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
  except OSError as err:
    raise ReproError(f"cannot write --out {out} ({err.strerror or err}): pass a writable "
                     f"file path") from None
  finally:
    plt.close(fig)
  return out


def define_flags() -> None:
  flags.DEFINE_string("out", "plot.png", "Where to write the PNG.")


@common.one_line_errors
def main(argv: list[str]) -> int:
  """bin/plot RUN [RUN ...] --out=plot.png: loss and accuracy curves, overlaid."""
  print(f"wrote {plot(argv[1:], FLAGS.out)}")
  return 0
