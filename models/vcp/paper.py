"""VCP-CLIP's paper: its Table 1 (SPEC_VCP §12) and its protocol (train on VisA and MVTec AD, test the rest)."""
from ..paper import Paper, row

PIXEL = ("pixel_auroc", "pixel_aupro", "pixel_ap")
IMAGE = ("image_auroc", "image_ap")


def _pixel(title, numbers, aliases=()):
    return row(title, "pixel", PIXEL, numbers, aliases)


PAPER = Paper(
    title="VCP-CLIP",
    rows={
        "mvtec": row("MVTec AD", "both", PIXEL + IMAGE, (92.0, 87.3, 49.4, 92.1, 96.9),
                     ("mvtecad", "mvtec_anomaly_detection")),
        "visa": row("VisA", "both", PIXEL + IMAGE, (95.7, 90.7, 30.1, 83.8, 87.6), ("visa_20220922",)),
        "bsd": _pixel("BSD", (99.3, 87.0, 70.2), ("bsdata",)),
        "gc10": _pixel("GC (GC10-DET)", (97.8, 83.8, 42.6), ("gc", "gc10det")),
        "ksdd2": _pixel("KSDD2", (99.5, 98.0, 75.2), ("kolektorsdd2",)),
        "msd": _pixel("MSD", (99.0, 91.1, 61.0), ("mobile_phone_screen",)),
        "road": _pixel("Road (CrackForest)", (93.6, 66.4, 32.1), ("crackforest", "cfd")),
        "rsdd": _pixel("RSDD", (99.5, 97.5, 44.1), ("rsdds",)),
        "btad": _pixel("BTech (BTAD)", (94.1, 74.6, 51.4), ("btech", "btech_dataset_transformed")),
        "dagm": _pixel("DAGM", (99.4, 98.3, 52.0), ("dagm2007", "dagm_kaggleupload")),
    },
    tables={
        "both": ("Table 1: pixel and image level (MVTec AD, VisA)", PIXEL + IMAGE),
        "pixel": ("Table 1: pixel level, the other eight datasets", PIXEL),
    },
    # The reference's VisA loader has no mosaic (SPEC_VCP §6), so the VisA run turns it off.
    training=(("visa", ("--learning_rate", "4e-5", "--aug_rate", "-1")), ("mvtec", ("--learning_rate", "2e-5"))),
    # the VisA-trained model evaluates every other dataset, the MVTec-trained one VisA
    evaluation={"visa": "mvtec", **{name: "visa" for name in (
        "mvtec", "bsd", "gc10", "ksdd2", "msd", "road", "rsdd", "btad", "dagm")}},
)
