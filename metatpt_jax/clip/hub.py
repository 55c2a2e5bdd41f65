"""Resolves a checkpoint given by name: a Hugging Face model id becomes a local directory.

`resolve_checkpoint("openai/clip-vit-base-patch16")` downloads config.json and the weights
through `huggingface_hub.snapshot_download` (or finds them in the HF cache) and returns the
directory, which `checkpoint.load_clip` reads. Where no network exists (or HF_HUB_OFFLINE=1 and
the model is not cached) it raises a CheckpointError that says how to supply a local path.
Existing paths are returned unchanged.
"""
from __future__ import annotations

import pathlib
import re

from metatpt_jax.clip.checkpoint_formats import CheckpointError

PAPER_MODEL = "openai/clip-vit-base-patch16"  # CLIP ViT-B/16, the paper's backbone
# "owner/name": letters, digits, '-', '_', '.'; no leading '.', '/' or '~' (those are paths).
_MODEL_ID = re.compile(r"^[A-Za-z0-9][\w\-.]*/[\w\-.]+$")
# Tried in order: safetensors when the repo has them, else PyTorch .bin (never both).
_WEIGHT_PATTERNS = (["config.json", "model.safetensors", "model.safetensors.index.json",
                     "model-*.safetensors"],
                    ["config.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
                     "pytorch_model-*.bin"])


def is_model_id(name: str) -> bool:
  """Whether `name` reads as a Hugging Face model id ("owner/name") rather than a path."""
  return bool(_MODEL_ID.match(str(name)))


def _how_to_supply(model_id: str) -> str:
  local = model_id.split("/")[-1]
  return (f"On a machine with network access run `hf download {model_id} --local-dir {local}` "
          f"(huggingface_hub's CLI; older versions: `huggingface-cli download ...`), copy the "
          f"directory here and pass its path: --config.model.checkpoint=/path/to/{local}. "
          "An OpenAI .pt file (e.g. ViT-B-16.pt) or an open_clip state dict works too.")


def _has_weights(directory: pathlib.Path) -> bool:
  return any(p.name != "config.json" for p in directory.iterdir())


def download(model_id: str, cache_dir: str | None = None) -> pathlib.Path:
  """config.json + weights of `model_id` via huggingface_hub; CheckpointError when offline."""
  try:
    import huggingface_hub
    from huggingface_hub import errors
  except ImportError as err:
    raise CheckpointError(f"{model_id!r} is not a local path and huggingface_hub is not "
                          f"installed (`pip install huggingface_hub`). "
                          f"{_how_to_supply(model_id)}") from err
  failure = None
  for patterns in _WEIGHT_PATTERNS:
    try:
      path = pathlib.Path(huggingface_hub.snapshot_download(
          model_id, allow_patterns=patterns, cache_dir=cache_dir))
    except (errors.RepositoryNotFoundError, errors.GatedRepoError) as err:
      raise CheckpointError(f"Hugging Face model {model_id!r} does not exist or is not "
                            f"accessible ({type(err).__name__}). {_how_to_supply(model_id)}"
                            ) from err
    except (errors.LocalEntryNotFoundError, errors.HfHubHTTPError, OSError) as err:
      failure = err  # offline, or HF_HUB_OFFLINE=1 with nothing cached
      break
    if _has_weights(path):
      return path
  reason = f"{type(failure).__name__}: {failure}" if failure else "no weight files in the repo"
  raise CheckpointError(f"Could not fetch the Hugging Face model {model_id!r} "
                        f"({str(reason)[:300]}). {_how_to_supply(model_id)}") from failure


def resolve_checkpoint(name) -> pathlib.Path:
  """A local path for `name`: existing paths as they are, model ids through the HF hub."""
  path = pathlib.Path(name).expanduser()
  if path.exists() or not is_model_id(str(name)):
    return path
  return download(str(name))
