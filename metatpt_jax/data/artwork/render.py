"""One framing for every style: the content cropped to its bounding box and re-padded by the same
margin, resized, and composited onto a background.

The packages pad their drawings differently (content fills 62-64 of 64 px in one, about 50 in
another, 32-64 in a font), so scale and padding alone would give the style away; after
`frame_artwork` the content's longer side always spans `1 - 2 * margin` of the image. Alpha is kept
(premultiplied) until the picture is put over a background, never dropped: several packages keep
garbage colour under alpha 0, and line art is black on transparent.
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


def frame_rgba(rgba: np.ndarray, size: int, margin: float = 0.1) -> np.ndarray | None:
  """Premultiplied RGBA uint8 [size, size, 4]: the content centred on a transparent square whose
  side is its longer side / (1 - 2 * margin), resized with an antialiasing filter (in
  premultiplied form, so transparent pixels' colour never bleeds in). None if empty."""
  box = content_box(rgba)
  if box is None:
    return None
  top, left, bottom, right = box
  content = rgba[top:bottom, left:right].astype(np.float32)
  content[..., :3] *= content[..., 3:] / 255.0  # premultiply: garbage under alpha 0 vanishes
  h, w = content.shape[:2]
  side = int(round(max(h, w) / (1.0 - 2.0 * margin)))
  square = np.zeros((side, side, 4), np.float32)
  y, x = (side - h) // 2, (side - w) // 2
  square[y:y + h, x:x + w] = content
  return resize_rgba(square, size)


def resize_rgba(premultiplied: np.ndarray, size: int) -> np.ndarray:
  """Premultiplied RGBA [H, W, 4] -> uint8 [size, size, 4], each channel Lanczos-resized (in
  float, so nothing clips before the end)."""
  channels = [np.asarray(Image.fromarray(premultiplied[..., c].astype(np.float32)).resize(
      (size, size), Image.Resampling.LANCZOS)) for c in range(4)]
  return np.clip(np.round(np.stack(channels, -1)), 0, 255).astype(np.uint8)


def over(premultiplied: np.ndarray, background) -> np.ndarray:
  """uint8 RGB of premultiplied RGBA [..., 4] over `background` (an RGB colour or an image of
  the same shape's RGB)."""
  alpha = premultiplied[..., 3:].astype(np.float32) / 255.0
  out = premultiplied[..., :3].astype(np.float32) + np.asarray(background, np.float32) * (1 - alpha)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def frame_artwork(rgba: np.ndarray, size: int, margin: float = 0.1,
                  background=WHITE) -> np.ndarray | None:
  """uint8 RGB [size, size, 3]: `frame_rgba` over an opaque background colour. None if empty."""
  framed = frame_rgba(rgba, size, margin)
  return None if framed is None else over(framed, background)
