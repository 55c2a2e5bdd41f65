"""Emoji artwork by several artists as an image-text world: packages, source kinds, framing,
classes and styles (see `styles`)."""
