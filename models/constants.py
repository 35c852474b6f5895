"""Numbers several methods share, each declared once (torch-free: the settings dataclasses read them for --help)."""

CLIP_TEMPERATURE = 0.07  # CLIP's initial logit temperature; the methods' fixed or initial temperatures start here
TEXT_PATCH_HEADS = 8  # heads of the text-to-patch cross-attention (ViP²-CLIP's FGP, VCP-CLIP's Post-VCP)
SMOOTHING_SIGMA = 8.0  # test-time Gaussian on the anomaly maps, in pixels (both references' literal)
