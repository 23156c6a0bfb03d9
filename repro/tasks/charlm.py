"""A tiny decoder-only transformer language model over the characters of a UTF-8 text.

    bin/train --task=repro.tasks.charlm:CharLM \\
        --task.text=/usr/share/common-licenses/GPL-3 --validation_examples=32 \\
        --monitor=val_perplexity --epochs=5

The text is cut into windows of context+1 characters (the last tenth of them
is the test split); the loss is next-character cross-entropy, the evaluation
metrics are per-character loss, perplexity and accuracy. The optimizer is its
own optax chain: gradient clipping, then AdamW.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from repro.errors import ReproError
from repro.task import Splits, Task

DEFAULT_TEXT = "/usr/share/common-licenses/GPL-3"


@functools.lru_cache(maxsize=4)
def read_corpus(path: str) -> tuple[str, np.ndarray]:
  """(vocabulary, the text as int32 indices into it); one line on a bad file."""
  file = Path(path).expanduser()
  try:
    text = file.read_bytes().decode("utf-8")
  except OSError as err:
    raise ReproError(f"cannot read --task.text={file} ({err.strerror}): pass a UTF-8 text file "
                     f"(e.g. {DEFAULT_TEXT})") from None
  except UnicodeDecodeError as err:
    raise ReproError(f"--task.text={file} is not UTF-8 text (byte {err.start}): pass a UTF-8 "
                     f"text file") from None
  vocabulary = "".join(sorted(set(text)))
  lookup = {c: i for i, c in enumerate(vocabulary)}
  return vocabulary, np.array([lookup[c] for c in text], dtype=np.int32)


class Block(nnx.Module):
  """Pre-norm transformer block: causal self-attention, then a 4x MLP."""

  def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs):
    self.norm1 = nnx.LayerNorm(width, rngs=rngs)
    self.attention = nnx.MultiHeadAttention(heads, width, decode=False, keep_rngs=False,
                                            rngs=rngs)
    self.norm2 = nnx.LayerNorm(width, rngs=rngs)
    self.up = nnx.Linear(width, 4 * width, rngs=rngs)
    self.down = nnx.Linear(4 * width, width, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    x = x + self.attention(self.norm1(x), mask=mask)
    return x + self.down(nnx.gelu(self.up(self.norm2(x))))


class CharTransformer(nnx.Module):
  """Token and learned position embeddings, `layers` blocks, a final norm, the logits."""

  def __init__(self, vocabulary: int, context: int, width: int, heads: int, layers: int, *,
               rngs: nnx.Rngs):
    self.embed = nnx.Embed(vocabulary, width, rngs=rngs)
    self.position = nnx.Param(jax.random.normal(rngs.params(), (context, width)) * 0.02)
    self.blocks = nnx.List([Block(width, heads, rngs=rngs) for _ in range(layers)])
    self.norm = nnx.LayerNorm(width, rngs=rngs)
    self.head = nnx.Linear(width, vocabulary, rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = self.embed(tokens) + self.position[:tokens.shape[1]]
    mask = nnx.make_causal_mask(tokens)
    for block in self.blocks:
      x = block(x, mask)
    return self.head(self.norm(x))


@dataclasses.dataclass
class CharLM(Task):
  """Options:

    text: the UTF-8 text file to model (where it is; its content enters the
      identity through the data fingerprint).
    context: characters of context a prediction sees.
    width, heads, layers: the transformer's size.
    noise: the fraction of input characters of each training window replaced by a random
      character of the vocabulary (Task.augment; 0: none). The targets stay clean.
  """

  name = "charlm"
  architecture = "CharTransformer-v1:embed+pos-prenorm(mha,mlp4x)-norm-dense:clip1-adamw0.01"
  higher_is_better = ("accuracy",)
  location_options = ("text",)

  text: str = DEFAULT_TEXT
  context: int = 64
  width: int = 64
  heads: int = 4
  layers: int = 2
  noise: float = 0.0

  def __post_init__(self):
    for name in ("context", "width", "heads", "layers"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ReproError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(self.noise, bool) or not isinstance(self.noise, (int, float)) or not (
        0 <= self.noise < 1):
      raise ReproError(f"noise must be a fraction in [0, 1), got {self.noise!r}")
    if self.width % self.heads:
      raise ReproError(f"width {self.width} must be divisible by heads {self.heads}")

  def optimizer(self, learning_rate) -> optax.GradientTransformation:
    """AdamW with the global gradient norm clipped to 1, as transformers are usually trained."""
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.adamw(learning_rate, weight_decay=0.01))

  def model(self, rngs: nnx.Rngs) -> nnx.Module:
    vocabulary, _ = read_corpus(self.text)
    return CharTransformer(len(vocabulary), self.context, self.width, self.heads, self.layers,
                           rngs=rngs)

  def data(self) -> Splits:
    _, ids = read_corpus(self.text)
    span = self.context + 1
    windows = (len(ids) - 1) // self.context
    if windows < 2:
      raise ReproError(f"--task.text={self.text} has {len(ids)} characters, too few for "
                       f"windows of {span}: pass a longer text or a smaller --task.context")
    tokens = np.stack([ids[i * self.context:i * self.context + span] for i in range(windows)])
    test = max(1, windows // 10)
    return Splits(train={"tokens": tokens[:-test]}, test={"tokens": tokens[-test:]},
                  source=f"windows of {span} characters of {self.text}")

  def _losses(self, model: nnx.Module, tokens: jax.Array,
              inputs: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    logits = model(tokens[:, :-1] if inputs is None else inputs)
    targets = tokens[:, 1:]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return losses, (jnp.argmax(logits, -1) == targets).astype(jnp.float32)

  def augment(self, example: dict, key: jax.Array) -> dict:
    """Input noise: each input character replaced, with probability `noise`, by a random one
    (the inputs, tokens[:-1], go in the field 'inputs'; the targets stay clean)."""
    if not self.noise:
      return example
    tokens = example["tokens"]
    hit, pick = jax.random.split(key)
    replace = jax.random.bernoulli(hit, self.noise, (tokens.shape[0] - 1,))
    random = jax.random.randint(pick, replace.shape, 0, len(read_corpus(self.text)[0]),
                                tokens.dtype)
    return {**example, "inputs": jnp.where(replace, random, tokens[:-1])}

  def loss(self, model: nnx.Module, batch) -> jax.Array:
    return self._losses(model, batch["tokens"], batch.get("inputs"))[0].mean()

  def eval_metrics(self, model: nnx.Module, batch) -> dict[str, jax.Array]:
    losses, correct = self._losses(model, batch["tokens"])
    return {"loss": losses.mean(axis=1), "accuracy": correct.mean(axis=1)}

  def summarize(self, means: dict[str, float]) -> dict[str, float]:
    """Every window has `context` targets, so the mean per window is the mean per character."""
    return {**means, "perplexity": math.exp(min(means["loss"], 700.0))}
