"""WinCLIP's paper: its zero-shot rows as ViP²-CLIP's table quotes them from the paper (SPEC_WINCLIP §10), and
its protocol: nothing trains, each dataset is evaluated as it is."""
from ..paper import NO_TRAINING, Paper, row

COLUMNS = ("image_auroc", "image_ap", "image_f1", "pixel_auroc", "pixel_aupro", "pixel_f1")

PAPER = Paper(
    title="WinCLIP",
    rows={
        "mvtec": row("MVTec AD", "zero_shot", COLUMNS, (91.8, 96.5, 92.7, 85.1, 64.6, 24.8),
                     ("mvtecad", "mvtec_anomaly_detection")),
        "visa": row("VisA", "zero_shot", COLUMNS, (78.1, 81.2, 78.2, 79.6, 56.8, 9.0), ("visa_20220922",)),
    },
    tables={"zero_shot": ("Zero-shot (training-free; ViT-B-16-plus-240 at 240 px)", COLUMNS)},
    training=(),
    evaluation={"mvtec": NO_TRAINING, "visa": NO_TRAINING},
)
