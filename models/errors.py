"""The errors model code raises for bad input, torch-free so that scripts can catch them before importing torch."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message names the file and what to do."""


class ClipWeightsError(ValueError):
    """The CLIP weights could not be found or read; the message says which flag to fix."""
