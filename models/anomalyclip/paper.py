"""AnomalyCLIP's paper (ICLR 2024, arXiv 2310.18961): the numbers this repository has of it, and its protocol.

Only the MVTec AD and VisA rows are declared (SPEC_ANOMALYCLIP §10 says where each number comes
from): pixel AUROC and AUPRO as the paper reports them (also quoted in VCP-CLIP's appendix,
/work/shared/PAPER_TABLES.md), image AUROC as the issue quotes the paper. The other datasets of
the paper are evaluated by `test.sh` and listed without the paper's numbers.
"""
from ..paper import Paper, row

COLUMNS = ("image_auroc", "pixel_auroc", "pixel_aupro")

PAPER = Paper(
    title="AnomalyCLIP",
    rows={
        "mvtec": row("MVTec AD", "industrial", COLUMNS, (91.5, 91.1, 81.4), ("mvtecad", "mvtec_anomaly_detection")),
        "visa": row("VisA", "industrial", COLUMNS, (82.1, 95.5, 87.0), ("visa_20220922",)),
    },
    tables={"industrial": ("Table 1: industrial datasets (the rows this repository has)", COLUMNS)},
    # train.sh of the reference: one run on VisA (its model tests MVTec AD), one on MVTec AD (tests the rest)
    training=(("visa", ()), ("mvtec", ())),
    evaluation={"mvtec": "visa", **{name: "mvtec" for name in (
        "visa", "mpdd", "btad", "ksdd", "dagm", "dtd", "headct", "brainmri", "br35h", "isic", "colondb", "clinicdb",
        "kvasir", "endo")}},
)
