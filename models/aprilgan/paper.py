"""APRIL-GAN's paper: its zero-shot table (SPEC_APRILGAN §10) and its protocol (train on one of MVTec AD / VisA, test the other)."""
from ..paper import Paper, row

COLUMNS = ("image_auroc", "image_ap", "image_f1", "pixel_auroc", "pixel_f1", "pixel_aupro")

PAPER = Paper(
    title="APRIL-GAN",
    rows={
        "mvtec": row("MVTec AD", "zero_shot", COLUMNS, (86.1, 93.5, 90.4, 87.6, 43.3, 44.0),
                     ("mvtecad", "mvtec_anomaly_detection")),
        "visa": row("VisA", "zero_shot", COLUMNS, (78.0, 81.4, 78.7, 94.2, 32.3, 86.8), ("visa_20220922",)),
    },
    tables={"zero_shot": ("Zero-shot (VisA-trained weights on MVTec AD, MVTec AD-trained on VisA)", COLUMNS)},
    # The released train.sh: MVTec AD 3 epochs with the mosaic at 0.2; VisA 15 epochs, no mosaic (its loader has none).
    training=(("mvtec", ("--epoch", "3", "--aug_rate", "0.2")), ("visa", ("--epoch", "15", "--aug_rate", "-1"))),
    evaluation={"mvtec": "visa", "visa": "mvtec"},
)
