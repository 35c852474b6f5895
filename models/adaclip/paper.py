"""AdaCLIP's numbers and protocol (SPEC_ADACLIP §10).

The numbers are ViP²-CLIP's authors' re-run of AdaCLIP under their protocol (their Tables 1
and 2, /work/shared/PAPER_TABLES.md): the cells this repository has. AdaCLIP's own paper
reports other metrics (image AUROC / AP, pixel AUROC / AUPRO on its splits) that could not be
had here. The protocol is the authors' train.sh / test.sh, as their README corrects the paper:
the model trained on MVTec AD + ColonDB (one run, both datasets) evaluates every other dataset,
the one trained on VisA + ClinicDB evaluates MVTec AD and ColonDB (SPEC_ADACLIP §7, §10).
"""
from ..paper import Paper, row

IMAGE = ("image_auroc", "image_ap", "image_f1")
PIXEL = ("pixel_auroc", "pixel_aupro", "pixel_f1")


def _industrial(title, image, pixel, aliases=()):
    return row(title, "industrial", IMAGE + PIXEL, image + pixel, aliases)


PAPER = Paper(
    title="AdaCLIP",
    rows={
        "mvtec": _industrial("MVTec AD", (90.1, 95.6, 92.3), (89.6, 37.8, 45.1), ("mvtecad", "mvtec_anomaly_detection")),
        "visa": _industrial("VisA", (87.2, 89.7, 83.5), (95.5, 56.8, 37.0), ("visa_20220922",)),
        "mpdd": _industrial("MPDD", (74.8, 78.6, 83.3), (96.1, 60.3, 31.9)),
        "ksdd": _industrial("KSDD", (97.2, 92.6, 89.5), (98.4, 53.0, 52.8), ("kolektorsdd", "ksdd1")),
        "btad": _industrial("BTAD", (89.3, 96.5, 90.9), (90.7, 22.3, 51.4), ("btech_dataset_transformed",)),
        "dagm": _industrial("DAGM", (98.2, 92.3, 90.9), (94.3, 42.5, 59.6), ("dagm2007", "dagm_kaggleupload")),
        "dtd": _industrial("DTD-Synthetic", (96.3, 98.1, 95.5), (98.5, 75.0, 71.8), ("dtdsynthetic",)),
        "headct": row("HeadCT", "medical_image", IMAGE, (94.0, 91.4, 90.1)),
        "brainmri": row("BrainMRI", "medical_image", IMAGE, (94.3, 95.5, 92.2), ("brain_tumor_dataset",)),
        "br35h": row("Br35H", "medical_image", IMAGE, (95.7, 95.8, 91.1)),
        "isic": row("ISIC", "medical_pixel", PIXEL, (91.3, 53.2, 75.5), ("isic2016",)),
        "colondb": row("CVC-ColonDB", "medical_pixel", PIXEL, (81.5, 64.3, 33.6), ("cvccolondb",)),
        "clinicdb": row("CVC-ClinicDB", "medical_pixel", PIXEL, (83.9, 65.7, 42.3), ("cvcclinicdb",)),
        "endo": row("EndoTect", "medical_pixel", PIXEL, (86.0, 63.4, 51.8), ("endotect",)),
        "kvasir": row("Kvasir", "medical_pixel", PIXEL, (81.6, 49.1, 47.1), ("kvasirseg",)),
    },
    tables={
        "industrial": ("AdaCLIP re-run by ViP²-CLIP's authors: industrial datasets (their Table 1)", IMAGE + PIXEL),
        "medical_image": ("AdaCLIP re-run by ViP²-CLIP's authors: medical, image level (their Table 2)", IMAGE),
        "medical_pixel": ("AdaCLIP re-run by ViP²-CLIP's authors: medical, pixel level (their Table 2)", PIXEL),
    },
    # The authors' train.sh (`--training_data mvtec colondb`, `visa clinicdb`): only their MVTec AD dataset class
    # draws the mosaic (0.2); ColonDB, VisA and ClinicDB none.
    training=(("mvtec+colondb", ("--aug_rate", "0.2", "--augment_datasets", "mvtec")),
              ("visa+clinicdb", ("--aug_rate", "-1"))),
    # The authors' test.sh: the VisA+ClinicDB model on MVTec AD and ColonDB, the MVTec+ColonDB one on the rest.
    evaluation={"mvtec": "visa+clinicdb", "colondb": "visa+clinicdb", **{name: "mvtec+colondb" for name in (
        "visa", "mpdd", "btad", "ksdd", "dagm", "dtd", "headct", "brainmri", "br35h", "isic", "clinicdb", "kvasir",
        "endo")}},
)
