"""Every command that README.md and docs/*.md show is run here, or says what checks it.

A command is a line of a ```sh or ```bash block (comments aside, `\\`
continuations joined) or a `$ ` line of a ```console block; a ```python block
is one too, named by its first line. Each must be a row of COMMANDS, which
says how it runs: so a command added to the docs without a test fails
test_every_command_of_the_docs_has_a_row. Commands run as written, in a
temporary directory laid out like a checkout (bin/ and repro/ linked in), one
bash script per group of the table, in the order the pages give them (README
first, then PAGES). Where running one as written would take minutes, its row
says how it is shrunk, mechanically: `tiny` appends tiny_flags(), the tests'
small IDX data (tests/conftest.py's fixtures) in place of Fashion-MNIST, and
`extra` appends flags after them (absl takes the last value of a repeated
flag). A console block's output lines (`...` elides) must appear, in order,
in what its command prints. About 30 processes in all: group dependent
commands, keep each small.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bits import assert_bitwise_equal, restore_state
from test_parallel import free_port

ROOT = Path(__file__).resolve().parent.parent
# The pages in the order a user needs them (README.md links each, in this order).
PAGES = ("your-own-model", "command-line", "training", "after-training", "big-data", "devices",
         "proving-it", "golden", "faults", "performance", "limits")
LANGUAGES = ("sh", "bash", "console", "python", "text")  # every fenced block says which
ELIDED = "..."  # a console output line that stands for lines left out
PROMPT = "$ "
PORT = "{port}"  # in `extra`: a free port, the same for every command of a group
NOT_RUN = "not run"  # group of the rows checked elsewhere (their `why` says where)


@dataclasses.dataclass(frozen=True)
class How:
  """How one command of the docs is run.

  group: the bash script (one per temporary directory) that runs it, or NOT_RUN.
  tiny: append tiny_flags() (the tests' small data); extra: then append these.
  exit: the exit code it must end with.
  file: a python block is written there and run with `python FILE`, after
  `prelude` (which makes it cheap). why: for rows not run, what checks them;
  unshown: why what a console block shows is not compared (measured elsewhere).
  """

  group: str
  tiny: bool = False
  extra: tuple[str, ...] = ()
  exit: int = 0
  file: str = ""
  prelude: str = ""
  why: str = ""
  unshown: str = ""


# A python prelude: repro.run trains 2 steps, and the default task on the tiny data
# (IDX and TFDS, its directories, are defined before it).
SMALL_RUNS = '''import repro
_run = repro.run
def _two_steps(config, task=None, **kwargs):
  data = {} if task is not None else {"data_dir": IDX, "tfds_dir": TFDS}
  config = config.replace(max_steps=2, task_options={**config.task_options, **data})
  return _run(config, task, **kwargs)
repro.run = _two_steps
'''
MEASURED = "docs/after-training.md shows it on Fashion-MNIST, measured (paths as a user's)"
AUDITED = ("measured on Fashion-MNIST (the tiny run's steps differ); tests/test_audit.py checks "
           "these lines")
SWAPPED = ("docs/proving-it.md's swapped run is tests/test_audit.py's: test_a_swapped_checkpoint_"
           "with_consistent_checksums_fails_at_its_links and test_a_step_after_a_swapped_"
           "checkpoint_replays_different make it and check these lines")
SINE = "import dataclasses"  # the first line of sine.py, the complete task
RESUME = "bin/train --seed=0 --epochs=1 --output=runs/b"  # the tour's resumed run
GOLDEN_CHECK = "PYTHONPATH=. bin/golden check golden.json"  # docs/golden.md, on sine.py
GOLDEN_PYTEST = "pytest -q test_bits.py"
TWO_PROCESSES = ("--micro_shards=4 --output=runs/two --coordinator_address=localhost:12355 "
                 "--num_processes=2")

COMMANDS = {
    # README.md: the two commands.
    "apt-get update && apt-get install -y dataset-fashion-mnist strace && python3 -m venv .venv && "
    ". .venv/bin/activate && pip install --require-hashes -r requirements.lock && "
    "pip install --no-deps -e . && bin/train --seed=0 --epochs=3":
        How(NOT_RUN, why="its install is the test command's (test_the_install_commands_differ_"
            "only_in_their_lock_and_what_they_run), which tests/test_packaging.py checks; its "
            "3 epochs of Fashion-MNIST take minutes: tests/test_accuracy.py trains those "
            "defaults for one"),
    "apt-get update && apt-get install -y dataset-fashion-mnist strace && python3 -m venv .venv && "
    ". .venv/bin/activate && pip install --require-hashes -r requirements-test.lock && "
    "pip install --no-deps -e . && pytest -q tests":
        How(NOT_RUN, why="CI's command: tests/test_packaging.py checks that .ci/run runs it "
            "verbatim; what it runs is this suite"),
    # README.md: the tour (and docs/proving-it.md's first bin/verify).
    "bin/train --seed=0 --epochs=1 --output=runs/a": How("tour", tiny=True),
    "bin/train --seed=0 --epochs=1 --output=runs/b --max_steps=400":
        How("tour", tiny=True, extra=("--max_steps=2",)),  # the tiny epoch is 4 steps
    RESUME: How("tour", tiny=True),
    "bin/check": How("tour", tiny=True, extra=("--check_pairs=again",),
                     unshown="proving-it.md shows every row on Fashion-MNIST, measured"),
    "bin/verify runs/a runs/b": How("tour"),
    "bin/plot runs/a runs/b --out=plot.png": How("tour"),
    "import jax.numpy as jnp": How("tour", file="load.py"),  # repro.load of runs/a
    # README.md and docs/after-training.md: after training (runs/a is the tour's).
    "bin/eval runs/a": How("tour", unshown=MEASURED),
    "bin/eval runs/a --split=train --json": How("tour"),
    "bin/train --seed=1 --epochs=1 --learning_rate=1e-4 --init_from=runs/a --output=runs/tuned":
        How("tour", tiny=True),
    "bin/verify --lineage runs/tuned": How("tour", unshown=MEASURED),
    "bin/export runs/tuned --out=exports/tuned --dtype=bfloat16": How("tour"),
    "# the export and the fine-tune, from Python": How("tour", file="exported.py"),
    # README.md: proving it (runs/b is the tour's resumed run: kept steps 2 and 4 here).
    "bin/audit runs/b": How("tour", unshown=AUDITED),
    "bin/replay runs/b --step=734 --dump=step734.npz":
        How("tour", extra=("--step=3",), unshown=AUDITED),  # the tiny run has 4 steps
    "def init_source(self, leaf: str) -> str | None:":
        How(NOT_RUN, why="a method of a task, not a program: tests/test_warmstart.py's "
            "test_fill_maps_and_skips_leaves_as_the_task_says... maps and skips leaves so"),
    # docs/your-own-model.md (and docs/proving-it.md's bin/check of the same task).
    "def augment(self, example, key):":
        How(NOT_RUN, why="a method of a task, not a program: tests/test_augment.py's "
            "test_the_docs_augment_is_the_resnets runs it against the ResNet example's"),
    SINE: How("sine", file="sine.py"),
    "PYTHONPATH=. bin/train --task=sine:Sine --epochs=20 --batch_size=32 --output=runs/sine-cli":
        How("sine"),
    "PYTHONPATH=. bin/check --task=sine:Sine --task.examples=1024 --batch_size=32":
        How("sine", extra=("--check_pairs=again",)),
    "bin/train --task=repro.tasks.resnet:ResNet --epochs=2 --validation_examples=5000":
        How("examples", tiny=True, extra=("--validation_examples=32", "--task.width=4")),
    "bin/train --task=repro.tasks.charlm:CharLM --epochs=20 --validation_examples=32 "
    "--monitor=val_perplexity --patience=3":
        How("examples", extra=("--epochs=2",)),  # --patience: test_features, test_tasks
    # docs/command-line.md
    "import repro": How("api", file="api.py", prelude=SMALL_RUNS),
    # docs/big-data.md
    "import numpy as np":
        How(NOT_RUN, why="a method of a task, not a program: the names it uses exist "
            "(test_the_python_fragments_name_what_exists); its sources are tests/test_feed.py's"),
    "bin/train --task=repro.tasks.npy:NpyCNN --task.images=images.npy --task.labels=labels.npy "
    "--output=runs/npy": How("npy", tiny=True),  # tiny: its test split is Fashion-MNIST's
    "# grain_cnn.py: the reference CNN reading Fashion-MNIST through a Grain pipeline":
        How("sources", file="grain_cnn.py"),
    "PYTHONPATH=. bin/train --task=grain_cnn:GrainCNN --data_path=host --epochs=1 "
    "--output=runs/grain": How("sources", tiny=True),  # tiny: the CNN's options, the small data
    "# points.py: a regression on a CSV file, read as a Hugging Face dataset":
        How("sources", file="points.py"),
    "python -c \"import numpy as np; x = np.linspace(-3, 3, 512); np.savetxt('points.csv', "
    "np.c_[x, x * x, np.sin(2 * x)], delimiter=',', header='a,b,target', comments='')\"":
        How("sources"),
    "PYTHONPATH=. bin/train --task=points:Points --data_path=host --epochs=5 "
    "--output=runs/points": How("sources"),
    # docs/devices.md
    "XLA_FLAGS=--xla_force_host_platform_device_count=4 bin/train --seed=0 --epochs=3 "
    "--output=runs/four": How("devices", tiny=True),
    "XLA_FLAGS=--xla_force_host_platform_device_count=4 bin/train --seed=0 --epochs=3 "
    "--devices=2 --output=runs/first-two": How("devices", tiny=True),
    "bin/train --seed=0 --epochs=3 --micro_shards=4": How("devices", tiny=True),
    "export XLA_FLAGS=--xla_force_host_platform_device_count=2": How("devices"),
    f"bin/train --seed=0 --epochs=3 {TWO_PROCESSES} --process_id=0 &":
        How("devices", tiny=True, extra=(f"--coordinator_address=localhost:{PORT}",)),
    f"bin/train --seed=0 --epochs=3 {TWO_PROCESSES} --process_id=1":
        How("devices", tiny=True, extra=(f"--coordinator_address=localhost:{PORT}",)),
    # docs/proving-it.md: the runs they compare are made by prepare_verify.
    "bin/verify runs/seed0 runs/seed1": How("verify", exit=1),
    "bin/verify runs/lr1e-3 runs/lr2e-3": How("verify", exit=1),
    # docs/golden.md: sine.py's bits recorded, checked, and checked again from pytest.
    "PYTHONPATH=. bin/golden record --task=sine:Sine --batch_size=32 --out=golden.json":
        How("sine"),
    GOLDEN_CHECK: How("sine"),
    "# test_bits.py: the task's bits, checked on every commit": How("sine", file="test_bits.py"),
    GOLDEN_PYTEST: How("sine"),
    "bin/audit runs/swapped": How(NOT_RUN, why=SWAPPED),
    "bin/replay runs/swapped --step=501": How(NOT_RUN, why=SWAPPED),
}


@dataclasses.dataclass(frozen=True)
class Command:
  """A command of the docs: its text, the page, and the output a console block shows."""

  text: str
  page: str
  language: str
  shown: tuple[str, ...] = ()
  code: str = ""  # a python block's program


def pages() -> list[Path]:
  return [ROOT / "README.md"] + [ROOT / "docs" / f"{name}.md" for name in PAGES]


def blocks(text: str) -> list[tuple[str, str]]:
  """(language, body) of every fenced block of a markdown text (those in list items too)."""
  return [(m.group(2), dedent(m.group(3), m.group(1)))
          for m in re.finditer(r"^( *)```(\S*)\n(.*?)^\1```$", text, re.S | re.M)]


def dedent(body: str, indent: str) -> str:
  return "".join(line[len(indent):] if line.startswith(indent) else line
                 for line in body.splitlines(keepends=True))


def shell_commands(body: str) -> list[str]:
  """The commands of an sh block: its non-comment lines, `\\` continuations joined."""
  joined = re.sub(r"\s*\\\n\s*", " ", body)
  return [line.strip() for line in joined.splitlines()
          if line.strip() and not line.strip().startswith("#")]


def console_commands(body: str) -> list[tuple[str, tuple[str, ...]]]:
  """(command, the output lines shown after it) of each `$ ` line of a console block."""
  found = []
  for line in body.splitlines():
    if line.startswith(PROMPT):
      found.append((line[len(PROMPT):].strip(), []))
    elif found:
      found[-1][1].append(line)
  return [(command, tuple(shown)) for command, shown in found]


def doc_commands() -> list[Command]:
  """Every command of README.md and docs/*.md, in the order the pages give them."""
  found = []
  for path in pages():
    page = str(path.relative_to(ROOT))
    for language, body in blocks(path.read_text()):
      if language in ("sh", "bash"):
        found += [Command(c, page, language) for c in shell_commands(body)]
      elif language == "console":
        found += [Command(c, page, language, shown) for c, shown in console_commands(body)]
      elif language == "python":
        found.append(Command(body.splitlines()[0], page, language, code=body))
  return found


def own_model_section() -> str:
  """docs/your-own-model.md's complete task (sine.py) and the bin/train command for it."""
  text = (ROOT / "docs" / "your-own-model.md").read_text()
  return text[text.index("## A complete task"):text.index("## What else a task may give")]


def test_every_command_of_the_docs_has_a_row():
  texts = [c.text for c in doc_commands()]
  without = [f"{c.page}: {c.text}" for c in doc_commands() if c.text not in COMMANDS]
  assert not without, f"commands without a row in COMMANDS: {without}"
  stale = [t for t in COMMANDS if t not in texts]
  assert not stale, f"rows of COMMANDS that no page gives: {stale}"
  python = [c.text for c in doc_commands() if c.language == "python"]
  assert len(python) == len(set(python)), "two python blocks start alike: name one otherwise"
  assert all(how.why for how in COMMANDS.values() if how.group == NOT_RUN)


def test_every_block_names_its_language_and_every_page_is_linked_in_order():
  for path in pages():
    languages = [language for language, _ in blocks(path.read_text())]
    assert all(language in LANGUAGES for language in languages), (path.name, languages)
  readme = (ROOT / "README.md").read_text()
  links = re.findall(r"^- \[docs/([a-z-]+)\.md\]", readme, re.M)
  assert tuple(links) == PAGES
  assert sorted(p.stem for p in (ROOT / "docs").glob("*.md")) == sorted(PAGES)


def slug(heading: str) -> str:
  """GitHub's anchor of a heading."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_between_the_pages_leads_to_a_file_and_heading():
  for path in pages():
    for target in re.findall(r"\]\(([^)#]*)(?:#([^)]*))?\)", path.read_text()):
      file, anchor = target
      if file.startswith("http"):
        continue
      linked = (path.parent / file).resolve() if file else path
      assert linked.exists(), f"{path.name} links {file}"
      if anchor:
        headings = re.findall(r"^#+ (.*)$", linked.read_text(), re.M)
        assert anchor in [slug(h) for h in headings], f"{path.name} links {file}#{anchor}"


def test_the_install_commands_differ_only_in_their_lock_and_what_they_run():
  """.ci/run runs the test command (tests/test_packaging.py); the train command installs alike."""
  train, test = [t for t in COMMANDS if t.startswith("apt-get")]
  assert train.replace("requirements.lock", "requirements-test.lock").replace(
      "bin/train --seed=0 --epochs=3", "pytest -q tests") == test


def test_the_python_fragments_name_what_exists():
  import repro
  import repro.data.source  # noqa: F401
  fragments = [c for c in doc_commands()
               if c.language == "python" and COMMANDS[c.text].group == NOT_RUN]
  assert fragments
  for fragment in fragments:
    compile(fragment.code, fragment.page, "exec")
    for name in sorted(set(re.findall(r"\brepro(?:\.\w+)+", fragment.code))):
      assert functools.reduce(getattr, name.split(".")[1:], repro) is not None, name


def rewritten(command: str, how: How, tiny: list[str], port: int) -> str:
  """The command as it runs here: the tiny flags and `extra` appended (before a trailing `&`)."""
  flags = (tiny if how.tiny else []) + [flag.replace(PORT, str(port)) for flag in how.extra]
  background = command.endswith(" &")
  body = command[:-2] if background else command
  return " ".join([body, *flags]) + (" &" if background else "")


def script(commands: list[Command], tiny: list[str], port: int) -> str:
  """One bash script running the commands in order, each one's output and status kept in out/."""
  lines = ["mkdir -p out"]
  for i, command in enumerate(commands):
    how = COMMANDS[command.text]
    text = f"python {how.file}" if how.file else rewritten(command.text, how, tiny, port)
    one = f"{{ {text.removesuffix(' &')}; }} >out/{i}.stdout 2>out/{i}.stderr; echo $? >out/{i}.rc"
    lines.append(f"{{ {one}; }} &" if text.endswith(" &") else one)
  return "\n".join(lines + ["wait", ""])


@dataclasses.dataclass(frozen=True)
class Ran:
  """What one command printed, and its exit status."""

  exit: int
  stdout: str
  stderr: str


def prepare_verify(directory: Path, options: dict) -> None:
  """The runs proving-it.md compares: seed 0 and 1, learning rates 1e-3 and 2e-3 (one process)."""
  base = dict(epochs=1, progress=False, task_options=options)
  configs = [dict(base, seed=0, output=str(directory / "runs" / "seed0")),
             dict(base, seed=1, output=str(directory / "runs" / "seed1")),
             dict(base, seed=0, learning_rate=2e-3, output=str(directory / "runs" / "lr2e-3"))]
  (directory / "configs.json").write_text(json.dumps(configs))
  subprocess.run([sys.executable, str(ROOT / "tests" / "run_configs.py"), "configs.json"],
                 cwd=directory, env=environment(), check=True, timeout=300)
  shutil.copytree(directory / "runs" / "seed0", directory / "runs" / "lr1e-3")  # same settings


def prepare_npy(directory: Path, options: dict) -> None:
  """images.npy and labels.npy: 256 training examples, as NpyCNN reads them."""
  count = 256
  images = (np.arange(count * 28 * 28) * 7 % 251).astype(np.uint8).reshape(count, 28, 28, 1)
  np.save(directory / "images.npy", images)
  np.save(directory / "labels.npy", (np.arange(count) % 10).astype(np.int32))


PREPARE = {"verify": prepare_verify, "npy": prepare_npy}


def environment() -> dict[str, str]:
  """The commands' environment: this Python first on PATH, repro from the linked checkout."""
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
  env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
  return dict(env, PYTHONUNBUFFERED="1")


def run_group(group: str, directory: Path, idx_dir: Path, tfds_dir: Path) -> dict[str, Ran]:
  """Runs a group's commands in `directory`, laid out like a checkout: command -> Ran."""
  for name in ("bin", "repro"):
    (directory / name).symlink_to(ROOT / name)
  options = {"data_dir": str(idx_dir), "tfds_dir": str(tfds_dir)}
  commands = list({c.text: c for c in in_group(group)}.values())  # each once, in order
  for command in commands:
    how = COMMANDS[command.text]
    if how.file:
      paths = f"IDX = {str(idx_dir)!r}\nTFDS = {str(tfds_dir)!r}\n" if how.prelude else ""
      (directory / how.file).write_text(paths + how.prelude + command.code)
  PREPARE.get(group, lambda *_: None)(directory, options)
  (directory / "commands.sh").write_text(script(commands, tiny_flags(options), free_port()))
  # Hugging Face's cache in the directory (not the user's), and never the network.
  hugging_face = {"HF_HOME": str(directory / "hf-home"), "HF_DATASETS_OFFLINE": "1",
                  "HF_HUB_OFFLINE": "1"}
  subprocess.run(["bash", "commands.sh"], cwd=directory, env={**environment(), **hugging_face},
                 timeout=900, check=True)
  out = directory / "out"
  return {c.text: Ran(int((out / f"{i}.rc").read_text()), (out / f"{i}.stdout").read_text(),
                      (out / f"{i}.stderr").read_text()) for i, c in enumerate(commands)}


def tiny_flags(options: dict) -> list[str]:
  """bin/train's flags of the tests' small data: the reference task's data options."""
  return [f"--task.{k}={v}" for k, v in options.items()]


def in_group(group: str) -> list[Command]:
  """The group's commands in the order the pages give them (a command may recur)."""
  return [c for c in doc_commands() if COMMANDS[c.text].group == group]


GROUPS = sorted({how.group for how in COMMANDS.values()} - {NOT_RUN})


@pytest.fixture(scope="module")
def ran(idx_dir, tfds_dir, tmp_path_factory):
  """ran(group) -> (its directory, {command: Ran}); each group runs once."""
  done = {}

  def get(group: str) -> tuple[Path, dict[str, Ran]]:
    if group not in done:
      directory = tmp_path_factory.mktemp(group)
      done[group] = directory, run_group(group, directory, idx_dir, tfds_dir)
    return done[group]

  return get


def shows(printed: str, shown: tuple[str, ...]) -> bool:
  """Whether the shown lines (ELIDED aside) are lines of `printed`, in order."""
  lines = iter(printed.splitlines())
  return all(any(line == want for line in lines) for want in shown if want.strip() != ELIDED)


@pytest.mark.parametrize("group", GROUPS)
def test_each_command_of_the_docs_ends_as_its_row_says_and_prints_what_they_show(ran, group):
  _, results = ran(group)
  for command in in_group(group):
    how, result = COMMANDS[command.text], results[command.text]
    assert result.exit == how.exit, (f"{command.text}: exit {result.exit}\n"
                                     f"{result.stdout}\n{result.stderr}")
    if not how.unshown:
      assert shows(result.stdout, command.shown), (command.page, command.text, result.stdout)


def test_the_tour_resumed_the_interrupted_run_and_checked_and_plotted(ran):
  directory, results = ran("tour")
  assert "resuming" in results[RESUME].stdout
  assert "reproducible here" in results["bin/check"].stdout
  assert (directory / "plot.png").stat().st_size > 0


def test_sine_trains_from_python_and_from_bin_train_with_the_same_bits(ran):
  directory, results = ran("sine")
  assert results[SINE].stdout.strip().splitlines()[-1].startswith(
      "step 320, loss ")
  assert_bitwise_equal(restore_state(directory / "runs" / "sine" / "320"),
                       restore_state(directory / "runs" / "sine-cli" / "320"))


def test_sines_golden_record_checks_equal_from_bin_golden_and_from_pytest(ran):
  directory, results = ran("sine")
  assert "recorded golden.json: task sine, 20 steps" in results[
      "PYTHONPATH=. bin/golden record --task=sine:Sine --batch_size=32 --out=golden.json"].stdout
  assert "golden check of golden.json: task sine, 20 steps" in results[GOLDEN_CHECK].stdout
  assert "1 passed" in results[GOLDEN_PYTEST].stdout
  assert len(json.loads((directory / "golden.json").read_text())["records"]) == 1


def test_the_two_processes_trained_one_run_over_four_devices(ran):
  directory, _ = ran("devices")
  step = max((p for p in (directory / "runs" / "two").iterdir() if p.name.isdigit()),
             key=lambda p: int(p.name))
  platform = json.loads((step / "manifest" / "metadata").read_text())["environment"]["platform"]
  assert (platform["process_count"], platform["devices_used"]) == (2, 4)
