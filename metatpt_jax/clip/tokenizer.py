"""CLIP's byte-level BPE tokenizer, written from the published description of OpenAI CLIP.

The vocabulary is rebuilt from OpenAI's merges file (shipped in ../assets under MIT): 256 byte
symbols, the same 256 with the end-of-word marker "</w>", 48,894 merges, then <|startoftext|> and
<|endoftext|>: 49,408 ids (OpenAI CLIP's vocabulary).

Text cleaning follows Hugging Face's `CLIPTokenizer` (the reference the tests check against),
which differs from OpenAI's `clip.tokenize` on a few rare inputs; we never call ftfy, so ids do
not depend on which optional packages happen to be installed:
  * no HTML unescaping: OpenAI maps "&amp;" to "&" (ftfy and `html.unescape`), HF keeps it;
  * NFC normalisation (OpenAI gets it only through ftfy, which also repairs mojibake);
  * lower-casing one character at a time: a final capital sigma becomes "σ", not "ς";
  * "<|startoftext|>" / "<|endoftext|>" typed in the text give the special ids only when
    spelled exactly so (HF matches special tokens before lower-casing); other spellings become
    the plain pieces "<|", the name, "|>", where OpenAI would give the special id.
Python's and the Rust library's Unicode tables also differ in version, so unassigned code points
and a few combining marks out of canonical order can split differently; real text is unaffected.
"""
from __future__ import annotations

import functools
import gzip
import importlib.resources
import json
import os
import unicodedata
from collections.abc import Sequence

import numpy as np
import regex

from metatpt_jax.clip.config import CONTEXT_LENGTH, EOT_TOKEN_ID, SOT_TOKEN_ID, VOCAB_SIZE

SOT_TEXT = "<|startoftext|>"
EOT_TEXT = "<|endoftext|>"
END_OF_WORD = "</w>"
NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2  # 48,894: OpenAI reads only this many lines of the file
_ASSET = "bpe_simple_vocab_16e6.txt.gz"
# sha256 of OpenAI's file as shipped in clip-anytorch 2.6.0 and open_clip_torch 3.3.0.
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"

# OpenAI's pre-tokenisation pattern, without IGNORECASE: the text is already lower-case, and
# folding would make the long s of "'ſ" a contraction, which HF does not. Contractions come first
# so "'s" stays one piece; each digit is a piece of its own.
_WORD_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
    r"""[^\s\p{L}\p{N}]+""")
_WHITESPACE = regex.compile(r"\s+")
_SPECIALS = (SOT_TEXT, EOT_TEXT)
_SPECIAL_SPLIT = regex.compile("(" + regex.escape(SOT_TEXT) + "|" + regex.escape(EOT_TEXT) + ")")


def bytes_to_unicode() -> dict[int, str]:
  """Maps each byte to a printable character, in OpenAI's order (which fixes ids 0..255).

  Printable Latin-1 bytes map to themselves; the other 68 (control bytes, space, soft hyphen)
  map to code points from 256 upward, so every symbol in the merges file is visible text.
  """
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
  table = {b: chr(b) for b in printable}
  others = [b for b in range(256) if b not in table]
  table.update({b: chr(256 + i) for i, b in enumerate(others)})
  return table


def default_bpe_path() -> str:
  """Path of the packaged merges file."""
  ref = importlib.resources.files("metatpt_jax") / "assets" / _ASSET
  return os.fspath(ref)


def _read_merges(path: str) -> list[tuple[str, str]]:
  """The first NUM_MERGES merge pairs of a gzipped merges file; errors name the file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"CLIP BPE vocabulary file {path!r} does not exist; expected "
                            f"OpenAI's {_ASSET} (the packaged copy is {default_bpe_path()!r}).")
  try:
    with gzip.open(path, "rt", encoding="utf-8") as f:
      lines = f.read().split("\n")
  except (OSError, EOFError, UnicodeDecodeError) as e:
    raise ValueError(f"CLIP BPE vocabulary file {path!r} is not a readable gzipped UTF-8 "
                     f"text file ({e}).") from e
  # Line 0 is a "#version" header; OpenAI ignores everything after the first NUM_MERGES merges.
  merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]
  bad = next((i for i, m in enumerate(merges) if len(m) != 2), None)
  if len(merges) < NUM_MERGES or bad is not None:
    where = f"line {bad + 2} is {lines[bad + 1]!r}" if bad is not None else f"{len(merges)} found"
    raise ValueError(f"CLIP BPE vocabulary file {path!r} is corrupt: expected {NUM_MERGES} "
                     f"merge lines of two symbols each; {where}.")
  return merges


class Tokenizer:
  """OpenAI CLIP's BPE tokenizer with Hugging Face's text cleaning (see module docstring)."""

  def __init__(self, bpe_path: str | os.PathLike | None = None, cache_size: int = 1 << 16):
    """Builds the vocabulary from `bpe_path` (default: the packaged merges file)."""
    self.bpe_path = os.fspath(bpe_path) if bpe_path is not None else default_bpe_path()
    self.merges = _read_merges(self.bpe_path)
    self.byte_encoder = bytes_to_unicode()
    self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
    symbols = list(self.byte_encoder.values())
    vocab = symbols + [s + END_OF_WORD for s in symbols] + ["".join(m) for m in self.merges]
    vocab += [SOT_TEXT, EOT_TEXT]
    self.encoder = {token: i for i, token in enumerate(vocab)}
    if len(self.encoder) != VOCAB_SIZE:  # duplicate merges would silently shift later ids
      raise ValueError(f"CLIP BPE vocabulary file {self.bpe_path!r} gives {len(self.encoder)} "
                       f"distinct tokens, expected {VOCAB_SIZE}.")
    self.decoder = vocab
    self.merge_ranks = {m: rank for rank, m in enumerate(self.merges)}
    # Per instance, so the cache dies with the tokenizer; class names repeat across prompts.
    self._bpe = functools.lru_cache(maxsize=cache_size)(self._bpe_uncached)

  def _bpe_uncached(self, word: str) -> tuple[str, ...]:
    """Splits one byte-encoded word into vocabulary tokens by applying merges in rank order."""
    parts = list(word[:-1]) + [word[-1] + END_OF_WORD]
    while len(parts) > 1:
      pairs = {(a, b) for a, b in zip(parts, parts[1:])}
      best = min(pairs, key=lambda p: self.merge_ranks.get(p, float("inf")))
      if best not in self.merge_ranks:
        break
      merged, i = [], 0
      while i < len(parts):  # merge every occurrence, left to right, never overlapping
        if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
          merged.append(parts[i] + parts[i + 1])
          i += 2
        else:
          merged.append(parts[i])
          i += 1
      parts = merged
    return tuple(parts)

  def _encode_plain(self, text: str) -> list[int]:
    """Ids of text that holds no special-token strings."""
    text = unicodedata.normalize("NFC", text)
    text = _WHITESPACE.sub(" ", text)
    # Per character like HF's normaliser: str.lower() would pick the final-sigma form.
    text = "".join(c.lower() for c in text)
    words = _WORD_PATTERN.findall(text)
    # Exact-case special strings were split off in `encode`; other spellings reach here as one
    # piece, which HF's byte-level stage (GPT-2's pattern) cuts into "<|", name, "|>". That
    # pattern leaves every other piece of ours whole.
    words = [p for w in words for p in ((w[:2], w[2:-2], w[-2:]) if w in _SPECIALS else (w,))]
    ids = []
    for word in words:
      encoded = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
      ids.extend(self.encoder[t] for t in self._bpe(encoded))
    return ids

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without SOT/EOT.

    Raises:
      TypeError: if `text` is not a string.
    """
    if not isinstance(text, str):
      raise TypeError(f"Tokenizer.encode expects a str, got {type(text).__name__}: {text!r:.80}.")
    ids = []
    for i, piece in enumerate(_SPECIAL_SPLIT.split(text)):
      if i % 2:  # odd pieces are the separators: exact special-token strings
        ids.append(SOT_TOKEN_ID if piece == SOT_TEXT else EOT_TOKEN_ID)
      elif piece:
        ids.extend(self._encode_plain(piece))
    return ids

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """Text of token ids (special ids render as their text; strip padding zeros first)."""
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    bad = [i for i in ids if not 0 <= i < len(self.decoder)]
    if bad:
      raise ValueError(f"Token ids {bad[:5]} are outside the vocabulary [0, {len(self.decoder)}).")
    # Special tokens are plain ASCII, which maps to itself, so one byte table covers all ids.
    raw = bytes(self.byte_decoder[c] for c in "".join(self.decoder[i] for i in ids))
    text = raw.decode("utf-8", errors="replace").replace(END_OF_WORD, " ")
    return text.strip()

  def __call__(self, texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH,
               truncate: bool = True) -> np.ndarray:
    """Tokenises texts into fixed-length rows, as OpenAI's `clip.tokenize`.

    Args:
      texts: one string or a sequence of N strings.
      context_length: row length L (77 for all released CLIP models).
      truncate: if a text is too long, keep its first L - 2 tokens and end with EOT; if False,
        raise instead.

    Returns:
      [N, L] int32 rows [SOT, tokens..., EOT, 0, ..., 0] (N = 1 for a single string).

    Raises:
      TypeError: if `texts` or one of its items is not a string.
      ValueError: if a text is too long and `truncate` is False, or if L < 2.
    """
    if isinstance(texts, str):
      texts = [texts]
    elif isinstance(texts, (bytes, bytearray)) or not hasattr(texts, "__iter__"):
      raise TypeError(f"texts must be a str or a sequence of str, got {type(texts).__name__}.")
    texts = list(texts)
    for i, t in enumerate(texts):
      if not isinstance(t, str):
        raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}: {t!r:.80}.")
    if context_length < 2:
      raise ValueError(f"context_length must be at least 2 (SOT and EOT), got {context_length}.")
    out = np.zeros((len(texts), context_length), np.int32)  # OpenAI pads with 0, HF with EOT
    for row, text in zip(out, texts):
      ids = [SOT_TOKEN_ID, *self.encode(text), EOT_TOKEN_ID]
      if len(ids) > context_length:
        if not truncate:
          shown = text if len(text) <= 100 else text[:100] + "..."
          raise ValueError(f"Text {shown!r} has {len(ids)} tokens with SOT and EOT, more than "
                           f"context_length={context_length}; shorten it or pass truncate=True.")
        ids = ids[:context_length - 1] + [EOT_TOKEN_ID]
      row[:len(ids)] = ids
    return out

  def write_hf_vocab(self, directory: str | os.PathLike) -> tuple[str, str]:
    """Writes Hugging Face-format vocab.json and merges.txt; returns their paths."""
    os.makedirs(directory, exist_ok=True)
    vocab_path = os.path.join(directory, "vocab.json")
    merges_path = os.path.join(directory, "merges.txt")
    with open(vocab_path, "w", encoding="utf-8") as f:
      json.dump(self.encoder, f, ensure_ascii=False)
    with open(merges_path, "w", encoding="utf-8") as f:
      f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self.merges))
    return vocab_path, merges_path


@functools.cache
def default_tokenizer() -> Tokenizer:
  """The tokenizer of the packaged vocabulary, built once per process."""
  return Tokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH,
             truncate: bool = True) -> np.ndarray:
  """`default_tokenizer()(texts, ...)`: [N, context_length] int32 ids."""
  return default_tokenizer()(texts, context_length=context_length, truncate=truncate)
