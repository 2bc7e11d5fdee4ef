"""Models: CLIP loading (the only open_clip importer) and the video encoder built on it."""
