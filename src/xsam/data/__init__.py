"""Data side of X-SAM: image, mask and visual-prompt transforms."""
