"""The one table that describes every supported dataset.

A dataset is a row: its command name, the layout walker that reads it, the walker's
parameters, and where to download it. Adding a dataset whose layout is already known
is one row; the CLI's sub-commands, their help and the README table all come from here.
"""

from __future__ import annotations

from . import layouts
from .files import DatasetError
from .spec import DatasetSpec


MVTEC_LAYOUT = "{cls}/train/good/*, {cls}/test/{good|defect}/*, {cls}/ground_truth/{defect}/{stem}_mask.png"
BRAIN_LAYOUT = "no/ (normal) and yes/ (tumour) image folders; other folders such as pred/ are ignored"
BRAIN = dict(walker=layouts.walk_image_level, layout=BRAIN_LAYOUT, class_name="brain",
             normal_dirs=("no",), anomalous_dirs=("yes",))
POLYP = dict(walker=layouts.walk_segmentation, layout="images/ and masks/ with matching file names",
             class_name="colon", mask_suffixes=("",), image_dir="images", mask_dir="masks")

_SPECS = (
    DatasetSpec("mvtec", "MVTec AD", layouts.walk_mvtec_like, MVTEC_LAYOUT,
                "https://www.mvtec.com/company/research/datasets/mvtec-ad"),
    DatasetSpec("visa", "VisA", layouts.walk_visa,
                "split_csv/1cls.csv (object, split, label, image, mask) with the paths it names",
                "https://github.com/amazon-science/spot-diff", csv_path="split_csv/1cls.csv"),
    DatasetSpec("mpdd", "MPDD", layouts.walk_mvtec_like, MVTEC_LAYOUT,
                "https://github.com/stepanje/MPDD"),
    DatasetSpec("btad", "BTAD", layouts.walk_mvtec_like,
                "{cls}/train/ok/*, {cls}/test/{ok|ko}/*, {cls}/ground_truth/ko/{stem}.png|.bmp",
                "https://github.com/pankajmishra000/VT-ADL", url_certain=False,
                normal_dirs=("ok",), mask_suffixes=("", "_mask")),
    DatasetSpec("ksdd", "KolektorSDD (KSDD)", layouts.walk_mvtec_like,
                "converted to the MVTec AD layout, one class folder (or the root itself): "
                "test/{good|defect}/*, ground_truth/{defect}/{stem}_mask.png",
                "https://www.vicos.si/resources/kolektorsdd/", class_name="electrical commutators"),
    DatasetSpec("dagm", "DAGM 2007", layouts.walk_dagm,
                "Class{n}/{Train,Test}/*.PNG, defect masks Class{n}/{Train,Test}/Label/{stem}_label.PNG; "
                "images without a mask are normal",
                "https://hci.iwr.uni-heidelberg.de/content/weakly-supervised-learning-industrial-optical-inspection",
                url_certain=False, mask_suffixes=("_label",), mask_dir="Label"),
    DatasetSpec("dtd", "DTD-Synthetic", layouts.walk_mvtec_like, MVTEC_LAYOUT,
                "https://drive.google.com/drive/folders/10OyPzvI3H6llCZBxKxFlKWt1Pw1tkMK1", url_certain=False),
    DatasetSpec("headct", "HeadCT", layouts.walk_headct,
                "numbered images (000.png ...) and labels.csv (id, hemorrhage), image-level",
                "https://www.kaggle.com/datasets/felipekitamura/head-ct-hemorrhage",
                class_name="brain", csv_path="labels.csv"),
    DatasetSpec("brainmri", "BrainMRI", url="https://www.kaggle.com/datasets/navoneel/"
                "brain-mri-images-for-brain-tumor-detection", **BRAIN),
    DatasetSpec("br35h", "Br35H", url="https://www.kaggle.com/datasets/ahmedhamada0/brain-tumor-detection", **BRAIN),
    DatasetSpec("isic", "ISIC 2016 (test set)", layouts.walk_segmentation,
                "images and their {stem}_Segmentation.png masks, in any folders below the root",
                "https://challenge.isic-archive.com/data/#2016",
                class_name="skin", mask_suffixes=("_Segmentation",)),
    DatasetSpec("colondb", "CVC-ColonDB", url="http://vi.cvc.uab.es/colon-qa/cvccolondb/", url_certain=False,
                **POLYP),
    DatasetSpec("clinicdb", "CVC-ClinicDB", url="https://polyp.grand-challenge.org/CVCClinicDB/",
                url_certain=False, **POLYP),
    DatasetSpec("kvasir", "Kvasir-SEG", url="https://datasets.simula.no/kvasir-seg/", **POLYP),
    DatasetSpec("endo", "EndoTect", layouts.walk_segmentation,
                "image folders plus masks/ with matching file names",
                "https://endotect.com/", url_certain=False,
                class_name="colon", mask_suffixes=("",), mask_dir="masks"),
    DatasetSpec("folder", "a generic folder dataset", layouts.walk_folder,
                "per class (the root or each sub-folder): images/ with masks/ (every image anomalous), "
                "or good/ (also ok/, normal/, no/) plus defect folders with optional masks/{defect}/{stem}.png",
                "", mask_suffixes=("_mask", ""), normal_dirs=("good", "ok", "normal", "no")),
)

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in _SPECS}


def get_spec(name: str) -> DatasetSpec:
    """The registry row for `name` (case-insensitive), or an error listing the names."""
    try:
        return DATASETS[name.lower()]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}") from None
