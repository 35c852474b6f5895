"""The one table that describes every supported dataset.

A dataset is a row: its command name, the layout walker that reads it, the walker's
parameters, and where to download it. Adding a dataset whose layout is already known
is one row; the CLI's sub-commands, their help and the README table all come from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import layouts
from .files import DatasetError
from .layouts import Walker


@dataclass(frozen=True)
class DatasetSpec:
    """How one dataset is laid out on disk and where to get it."""

    name: str                                   # the command's NAME argument
    title: str                                  # the dataset's usual name, for messages
    walker: Walker                              # the layout function that reads it
    layout: str                                 # the expected layout, in words (help, errors, README)
    url: str                                    # official download / project page
    url_certain: bool = True                    # False where the URL is from memory and unverified
    class_name: str | None = None               # a fixed class name; None: the folder names
    normal_dirs: tuple[str, ...] = ("good",)    # label folders holding normal images
    anomalous_dirs: tuple[str, ...] = ()        # label folders of anomalies; () = every other folder
    mask_suffixes: tuple[str, ...] = ("_mask",)  # mask stem = image stem + one of these
    image_dir: str | None = None                # segmentation sets: the image folder
    mask_dir: str | None = None                 # the mask folder (DAGM: inside each split)
    csv_path: str | None = None                 # VisA's split csv, HeadCT's labels

    def label_of(self, folder_name: str) -> bool | None:
        """Whether a label folder holds anomalies (True), normal images (False), or is
        not a label folder at all (None, e.g. Br35H's `pred/`); case-insensitive."""
        name = folder_name.lower()
        if name in (n.lower() for n in self.normal_dirs):
            return False
        if not self.anomalous_dirs:
            return True
        return True if name in (n.lower() for n in self.anomalous_dirs) else None


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
