"""CLIP tokenizer: packaged vocabulary, id-for-id parity with Hugging Face, errors, decoding.

The reference is `transformers.CLIPTokenizer` built from vocab.json/merges.txt files written two
ways: by our `write_hf_vocab`, and independently below straight from the gz, so a bug in our
vocabulary code cannot make both sides agree. HF, not OpenAI's `clip.tokenize`, is the reference
because without ftfy installed the two differ (HTML entities, NFC); see the tokenizer module.
The strings avoid unassigned code points and stray combining marks, where Python's and Rust's
Unicode tables (different versions) disagree.
"""
import gzip
import hashlib
import json
import os

import numpy as np
import pytest

from metatpt_jax.clip import tokenizer as tok_lib
from metatpt_jax.clip.config import CONTEXT_LENGTH, EOT_TOKEN_ID, SOT_TOKEN_ID, VOCAB_SIZE

transformers = pytest.importorskip("transformers")

CLASS_NAMES = [
    "jack-o'-lantern", "T-shirt/top", "1960s", "Dungeness crab", "German shepherd dog",
    "Yorkshire terrier", "potter's wheel", "carpenter's kit", "cock", "ping-pong ball",
    "CD player", "Granny Smith", "St. Bernard", "three-toed sloth", "African bush elephant",
    "maillot (tank suit)", "7-11 store", "U.S. mailbox", "hen-of-the-woods", "crêpe",
    "Pokémon card", "café au lait", "Straße", "façade", "naïve art", "smörgåsbord",
    "Ångström", "jalapeño", "ΟΔΟΣ", "東京タワー", "김치", "日本語のテキスト", "🐶 dog", "🍕🍕",
    "hot-dog 🌭", "half-track", "Model T", "B-52 bomber", "R2-D2", "F-16", "4x4 truck",
    "10,000 ft", "3.14 pie", "can't", "it's", "they're", "we've", "I'm", "you'll", "he'd",
    "IT'S LOUD", "O'Neil", "rock 'n' roll", "AT&T", "100%", "$5 bill", "e-mail", "#hashtag",
    "@user", "C++", "a/b/c", "x_y_z", "~tilde~", "[brackets]", "{braces}", "quote \"here\"",
]
TEMPLATES = [
    "a photo of a {}.", "a bad photo of the {}.", "a sculpture of a {}.", "itap of my {}.",
    "a photo of the large {}.", "art of the {}.", "a photo of a {}, a type of pet.", "{}",
    "a close-up photo of a {}!", "a rendition of the {}?", "X X X X {}.",
]
EXTRA_STRINGS = [
    "", " ", "\t", "a  photo\tof\na\r\ndog", "   leading and trailing   ", "&amp; &lt;tag&gt;",
    "&quot;quoted&quot;", "fish &amp; chips", "&#39;s", "<|endoftext|>", "<|startoftext|>",
    "x<|startoftext|>y<|endoftext|>z", "<|ENDOFTEXT|>", "it'ſ", "e\u0301 composed", "\u00a0nbsp",
    "zero\u200bwidth", "line\u2028sep", "ﬁ ligature", "Ⅻ roman", "½ half", "x²", "١٢٣ arabic",
    "hello, world! 123", "ǅ titlecase", "İstanbul", "MAẞE", "emoji 👩‍👩‍👧 zwj", "🇩🇪 flag",
    "word " * 100, "supercalifragilisticexpialidocious" * 4, "1234567890" * 12,
    " ".join(CLASS_NAMES), "a" * 500,
]


def _varied_strings(n_random=300, seed=0):
  """The fixed strings plus seeded random mixtures of them, with odd spacing and repetition."""
  rng = np.random.default_rng(seed)
  pieces = CLASS_NAMES + EXTRA_STRINGS[:29]
  spaces = [" ", "  ", "\t", "\n", " \u3000 ", ""]
  out = [t.format(c) for t in TEMPLATES for c in CLASS_NAMES[::7]] + CLASS_NAMES + EXTRA_STRINGS
  for _ in range(n_random):
    words = [pieces[i] for i in rng.integers(0, len(pieces), rng.integers(1, 6))]
    text = "".join(w + spaces[rng.integers(len(spaces))] for w in words)
    text = TEMPLATES[rng.integers(len(TEMPLATES))].format(text) * int(rng.integers(1, 8))
    out.append(text.upper() if rng.random() < 0.15 else text)
  return out


def _independent_hf_files(directory):
  """vocab.json/merges.txt built from the gz here, without our tokenizer's code."""
  with gzip.open(tok_lib.default_bpe_path(), "rt", encoding="utf-8") as f:
    merges = f.read().split("\n")[1:1 + 49152 - 256 - 2]  # OpenAI's slice of the file
  visible = [b for b in range(256) if 33 <= b <= 126 or 161 <= b <= 255 and b != 173]
  hidden = [b for b in range(256) if b not in visible]
  byte_chars = [chr(b) for b in visible] + [chr(256 + k) for k in range(len(hidden))]
  tokens = byte_chars + [c + "</w>" for c in byte_chars] + [m.replace(" ", "") for m in merges]
  tokens += ["<|startoftext|>", "<|endoftext|>"]
  vocab_path, merges_path = os.path.join(directory, "vocab.json"), os.path.join(directory, "m.txt")
  with open(vocab_path, "w", encoding="utf-8") as f:
    json.dump({t: i for i, t in enumerate(tokens)}, f)
  with open(merges_path, "w", encoding="utf-8") as f:
    f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
  return vocab_path, merges_path


@pytest.fixture(scope="module")
def tok():
  return tok_lib.default_tokenizer()


@pytest.fixture(scope="module")
def hf_pair(tok, tmp_path_factory):
  ours_dir, ref_dir = tmp_path_factory.mktemp("ours"), tmp_path_factory.mktemp("ref")
  ours_files = tok.write_hf_vocab(ours_dir)
  ref_files = _independent_hf_files(ref_dir)
  # transformers 5.x: the keywords are vocab=/merges=; vocab_file= is silently ignored.
  return tuple(transformers.CLIPTokenizer(vocab=v, merges=m) for v, m in (ours_files, ref_files))


def test_packaged_vocabulary_checksum_and_size(tok):
  with open(tok_lib.default_bpe_path(), "rb") as f:
    assert hashlib.sha256(f.read()).hexdigest() == tok_lib.BPE_SHA256
  assert len(tok.encoder) == len(tok.decoder) == VOCAB_SIZE
  assert tok.encoder["<|startoftext|>"] == SOT_TOKEN_ID
  assert tok.encoder["<|endoftext|>"] == EOT_TOKEN_ID
  assert tok.decoder[0] == "!" and tok.decoder[256] == "!</w>"  # OpenAI's byte order
  assert tok_lib.default_tokenizer() is tok


def test_written_hf_files_equal_independent_build(tok, tmp_path):
  ours_vocab, ours_merges = tok.write_hf_vocab(tmp_path / "ours")
  ref_vocab, ref_merges = _independent_hf_files(tmp_path)
  with open(ours_vocab, encoding="utf-8") as a, open(ref_vocab, encoding="utf-8") as b:
    assert json.load(a) == json.load(b)
  with open(ours_merges, encoding="utf-8") as a, open(ref_merges, encoding="utf-8") as b:
    ours_lines = a.read().splitlines()
    assert ours_lines[0] == "#version: 0.2" and ours_lines == b.read().splitlines()


@pytest.mark.parametrize("which", ["written_by_us", "built_independently"])
def test_ids_match_transformers(tok, hf_pair, which):
  hf = hf_pair[0 if which == "written_by_us" else 1]
  texts = _varied_strings()
  assert len(texts) >= 200
  ours = tok(texts)
  assert ours.shape == (len(texts), CONTEXT_LENGTH) and ours.dtype == np.int32
  ref = hf(texts, truncation=True, max_length=CONTEXT_LENGTH)["input_ids"]
  for text, row, ref_ids in zip(texts, ours, ref):
    n = len(ref_ids)
    assert row[:n].tolist() == ref_ids, text
    assert not row[n:].any(), text  # OpenAI pads with 0 where HF pads with EOT
  assert (ours[:, -1] == EOT_TOKEN_ID).sum() >= 5  # the long texts really were truncated


def test_layout_and_truncation(tok):
  ids = tok.encode("a photo of a dog.")
  row = tok("a photo of a dog.")[0]
  assert row[:len(ids) + 2].tolist() == [SOT_TOKEN_ID, *ids, EOT_TOKEN_ID]
  assert not row[len(ids) + 2:].any()
  long_ids = tok.encode("dog " * 100)
  row = tok("dog " * 100, context_length=10)[0]
  assert row.tolist() == [SOT_TOKEN_ID, *long_ids[:8], EOT_TOKEN_ID]
  exact = " ".join(["dog"] * 75)  # SOT + 75 + EOT fills 77 exactly: no error, no truncation
  assert tok(exact, truncate=False)[0, -1] == EOT_TOKEN_ID
  np.testing.assert_array_equal(tok_lib.tokenize(["a", "b c"]), tok(["a", "b c"]))


def test_empty_inputs(tok):
  assert tok.encode("") == []
  assert tok("")[0, :3].tolist() == [SOT_TOKEN_ID, EOT_TOKEN_ID, 0]
  assert tok([]).shape == (0, CONTEXT_LENGTH)


def test_errors_name_the_problem(tok, tmp_path):
  missing = str(tmp_path / "nope.txt.gz")
  with pytest.raises(FileNotFoundError, match="nope.txt.gz"):
    tok_lib.Tokenizer(missing)
  not_gzip = tmp_path / "plain.txt.gz"
  not_gzip.write_text("#version: 0.2\na b\n")
  with pytest.raises(ValueError, match="plain.txt.gz"):
    tok_lib.Tokenizer(not_gzip)
  short = tmp_path / "short.txt.gz"
  with gzip.open(short, "wt") as f:
    f.write("#version: 0.2\ni n\nt h\n")
  with pytest.raises(ValueError, match="short.txt.gz.*corrupt"):
    tok_lib.Tokenizer(short)
  with pytest.raises(TypeError, match="int"):
    tok(123)
  with pytest.raises(TypeError, match=r"texts\[1\].*int"):
    tok(["ok", 5])
  with pytest.raises(TypeError, match="bytes"):
    tok(b"bytes")
  with pytest.raises(TypeError, match="NoneType"):
    tok.encode(None)
  with pytest.raises(ValueError, match="dog dog.*79 tokens"):
    tok(" ".join(["dog"] * 77), truncate=False)
  with pytest.raises(ValueError, match="context_length"):
    tok("a", context_length=1)
  with pytest.raises(ValueError, match="outside the vocabulary"):
    tok.decode([VOCAB_SIZE])


def test_decode_round_trip(tok):
  rng = np.random.default_rng(0)
  letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
  for _ in range(50):
    words = ["".join(rng.choice(letters, rng.integers(1, 12))) for _ in range(rng.integers(1, 9))]
    text = " ".join(words)
    assert tok.decode(tok.encode(text)) == text
  row = tok("a photo of a dog")[0]
  n = int(np.argmax(row == EOT_TOKEN_ID)) + 1
  assert tok.decode(row[:n]) == "<|startoftext|>a photo of a dog <|endoftext|>"
