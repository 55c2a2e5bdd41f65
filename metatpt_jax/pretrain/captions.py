"""Caption templates and the token table the pretraining samples captions from.

Every template is one sentence with a `{}` for the class name. "a photo of a {}." comes
first: it is the prompt TPT initialises its context from, so zero-shot with that prompt
should already be good. The rest name the conditions the augmentations (and the test
shifts) produce, so the text tower learns them as modifiers of the class, not as classes.
"""
from __future__ import annotations

import numpy as np

TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a black and white photo of a {}.",
    "a blurry photo of a {}.",
    "a noisy photo of a {}.",
    "a dark photo of a {}.",
    "a bright photo of a {}.",
    "a low contrast photo of a {}.",
    "a small photo of a {}.",
    "a rotated photo of a {}.",
    "a cropped photo of a {}.",
    "a pixelated photo of a {}.",
    "a silhouette of a {}.",
    "a {}.",
)
# "Described" captions (pretraining v2): each training image draws one of these transformations,
# applied at a random strength (`augment.apply_described`), and its one caption is the template
# that names it, the way web captions describe photos. TPT's prompt "a photo of a" is the
# untransformed caption, so tuning the context can move the text toward "a blurry photo of a".
DESCRIBED = (
    ("none", "a photo of a {}."),
    ("blur", "a blurry photo of a {}."),
    ("noise", "a noisy photo of a {}."),
    ("dark", "a dark photo of a {}."),
    ("bright", "a bright photo of a {}."),
    ("low_contrast", "a low contrast photo of a {}."),
    ("rotated", "a rotated photo of a {}."),
    ("small", "a small photo of a {}."),
    ("inverted", "an inverted photo of a {}."),
)
DESCRIBED_NAMES = tuple(name for name, _ in DESCRIBED)
DESCRIBED_TEMPLATES = tuple(template for _, template in DESCRIBED)

# The zero-shot classifier at the end of pretraining averages these (a subset so the
# evaluation also reads sentences the model saw with other wordings of the class).
EVAL_TEMPLATES = TEMPLATES[:8]


def caption_table(class_names, templates, tokenizer, context_length: int) -> np.ndarray:
  """Token ids of every (class, template) caption.

  Args:
    class_names: C names.
    templates: T strings with one `{}`.
    tokenizer: callable `(texts, context_length=...) -> [N, L] int32`.
  Returns:
    [C, T, context_length] int32.
  """
  texts = [t.format(name) for name in class_names for t in templates]
  ids = np.asarray(tokenizer(texts, context_length=context_length), np.int32)
  return ids.reshape(len(class_names), len(templates), context_length)
