"""The one table that describes every supported dataset.

A dataset is a row: its command name, the layout walker that reads it, the walker's
parameters, and where to download it. Adding a dataset whose layout is already known
is one row; the CLI's sub-commands, their help and the README table all come from here.
"""

from __future__ import annotations

from . import layouts, surface_layouts
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
    # The industrial benchmarks VCP-CLIP adds (SPEC_VCP §12); BTech is BTAD above.
    DatasetSpec("ksdd2", "KolektorSDD2 (KSDD2)", surface_layouts.walk_ksdd2,
                "train/ and test/ holding {id}.png with its {id}_GT.png beside it (an empty mask is a normal "
                "image); class `surface`",
                "https://www.vicos.si/Downloads/KolektorSDD2", url_certain=False,
                class_name="surface", mask_suffixes=("_GT",)),
    DatasetSpec("rsdd", "RSDD (rail surface, Type-I and Type-II)", surface_layouts.walk_rsdd,
                "'Type-I RSDDs dataset/' and 'Type-II RSDDs dataset/' (or --root one of them), each with "
                "'Rail surface images/' and 'GroundTruth/' (JPEG masks of the image's name, which --convert_masks "
                "binarises into GroundTruth_png/); classes `Type-I rail` and `Type-II rail`, every image anomalous",
                "http://icn.bjtu.edu.cn/Visint/resources/RSDDs.aspx", url_certain=False, mask_suffixes=("",),
                convert_masks=surface_layouts.convert_rsdd,
                convert_help="first write GroundTruth_png/{stem}.png from each GroundTruth/*.jpg (grey > 127 is "
                             "defect); PNGs already there are kept"),
    DatasetSpec("road", "Road (CrackForest, CFD)", surface_layouts.walk_road,
                "image/{stem}.jpg and groundTruth/{stem}.mat, which --convert_masks turns into "
                "groundTruth_png/{stem}.png; images without a .mat are left out; class `road`",
                "https://github.com/cuilimeng/CrackForest-dataset", class_name="road", mask_suffixes=("",),
                convert_masks=surface_layouts.convert_road,
                convert_help="first write groundTruth_png/{stem}.png from each groundTruth/*.mat (crack = "
                             "Segmentation == 2); PNGs already there are kept"),
    DatasetSpec("msd", "MSD (mobile phone screen surface defects)", surface_layouts.walk_msd,
                "good/, oil/, scratch/, stain/ with masks {stem}.png in ground_truth_1/ (scratch, stain) and "
                "ground_truth_2/ (oil), as on Kaggle; or the PASCAL VOC release's JPEGImages/ + "
                "SegmentationClass/ (plus good/); class `phone screen`",
                "https://github.com/jianzhang96/MSD", class_name="phone screen", mask_suffixes=("",)),
    DatasetSpec("bsd", "BSD (BSData, ball screw drive surface defects)", surface_layouts.walk_bsd,
                "data/*.jpg and label/{stem}.json (labelme polygons), which --convert_masks turns into "
                "label_png/{stem}.png; only the annotated (defective) images are listed, as in the VCP-CLIP "
                "paper; class `ball screw`",
                "https://github.com/2Obe/BSData", class_name="ball screw", mask_suffixes=("",),
                convert_masks=surface_layouts.convert_bsd,
                convert_help="first write label_png/{stem}.png from each label/*.json (the labelme shapes "
                             "filled); PNGs already there are kept"),
    DatasetSpec("gc10", "GC10-DET (steel sheet surface)", surface_layouts.walk_gc10,
                "the release's image folders and lable/*.xml boxes, plus masks/{stem}.png that you make: "
                "GC10-DET publishes boxes only and the paper's MobileSAM masks are not public; class `steel sheet`",
                "https://www.kaggle.com/datasets/alex000kim/gc10det", class_name="steel sheet",
                mask_suffixes=("", "_mask")),
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
