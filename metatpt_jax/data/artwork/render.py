"""One framing for every style: alpha composited onto a background, the content cropped to its
bounding box and re-padded by the same margin, then resized.

The packages pad their drawings differently (content fills 62-64 of 64 px in one, about 50 in
another, 32-64 in a font), so scale and padding alone would give the style away; after
`frame_artwork` the content's longer side always spans `1 - 2 * margin` of the image. Transparent
pixels are composited, never dropped: several packages keep garbage colour under alpha 0, and
line art is black on transparent.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

WHITE = (255, 255, 255)


def content_box(rgba: np.ndarray, threshold: int = 8):
  """(top, left, bottom, right), exclusive ends, of the pixels with alpha > threshold, or None
  for a picture with no visible content."""
  rows = np.flatnonzero((rgba[..., 3] > threshold).any(axis=1))
  cols = np.flatnonzero((rgba[..., 3] > threshold).any(axis=0))
  if rows.size == 0:
    return None
  return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def composite(rgba: np.ndarray, background=WHITE) -> np.ndarray:
  """float32 RGB [H, W, 3] in [0, 255] of RGBA uint8 over an opaque background colour."""
  alpha = rgba[..., 3:].astype(np.float32) / 255.0
  return rgba[..., :3].astype(np.float32) * alpha + np.float32(background) * (1.0 - alpha)


def frame_artwork(rgba: np.ndarray, size: int, margin: float = 0.1,
                  background=WHITE) -> np.ndarray | None:
  """uint8 RGB [size, size, 3]: the content, centred on a square of `background` whose side is
  its longer side / (1 - 2 * margin), resized with an antialiasing filter. None if empty."""
  box = content_box(rgba)
  if box is None:
    return None
  top, left, bottom, right = box
  content = composite(rgba[top:bottom, left:right], background)
  h, w = content.shape[:2]
  side = int(round(max(h, w) / (1.0 - 2.0 * margin)))
  square = np.empty((side, side, 3), np.float32)
  square[:] = np.float32(background)
  y, x = (side - h) // 2, (side - w) // 2
  square[y:y + h, x:x + w] = content
  image = Image.fromarray(np.clip(np.round(square), 0, 255).astype(np.uint8))
  return np.asarray(image.resize((size, size), Image.Resampling.LANCZOS))
