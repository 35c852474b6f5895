"""The industrial benchmarks VCP-CLIP adds (KSDD2, RSDD, Road, MSD, BSD, GC10-DET): a
tiny tree per release layout with normal and anomalous images, their masks, and the
usual traps (a missing mask, an extra file), checked through build_meta, the mask
conversions (`--convert_masks`) and the command a user types."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset_trees import by_path, check_meta, counts, image, mask, run_cli, text
from generate_dataset_json import DATASETS, DatasetError, DatasetWarning, build_meta
from generate_dataset_json.files import Problems


def blank(root: Path, rel: str, size=(4, 3)) -> Path:
    """A mask that marks no pixel (KSDD2's ground truth of a normal image)."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, 0).save(path)
    return path


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as opened:
        return np.asarray(opened)


def convert(name: str, root: Path) -> tuple[list[str], Problems]:
    """Runs a row's `--convert_masks` step as the command does; returns its lines and problems."""
    spec = DATASETS[name]
    problems = Problems()
    return spec.convert_masks(root, spec, problems), problems


def quiet(message: str) -> None:
    """A warn callback for tests that check the meta, not the warnings."""


# --------------------------------------------------------------------------- registry

def test_each_vcp_benchmark_has_a_row_with_a_download_page():
    for name in ("ksdd2", "rsdd", "road", "msd", "bsd", "gc10"):
        spec = DATASETS[name]
        assert spec.url.startswith("http") and spec.layout
    assert {n for n, s in DATASETS.items() if s.convert_masks} == {"rsdd", "road", "bsd"}


# --------------------------------------------------------------------------- KolektorSDD2

def make_ksdd2(root: Path) -> Path:
    image(root, "train/10000.png")
    blank(root, "train/10000_GT.png")
    image(root, "train/10001.png")
    mask(root, "train/10001_GT.png")
    image(root, "test/20000.png")
    blank(root, "test/20000_GT.png")
    image(root, "test/20001.png")
    mask(root, "test/20001_GT.png")
    text(root, "readme.txt")
    return root


def test_ksdd2_labels_come_from_the_mask_content(tmp_path):
    root = make_ksdd2(tmp_path / "KolektorSDD2")
    meta = build_meta("ksdd2", tmp_path)  # the archive's folder one level below the root works
    check_meta(meta, tmp_path)
    assert counts(meta) == {"surface": (1, 1)} and counts(meta, "train") == {"surface": (1, 1)}
    items = by_path(meta)
    assert items["KolektorSDD2/test/20001.png"] == {
        "img_path": "KolektorSDD2/test/20001.png", "mask_path": "KolektorSDD2/test/20001_GT.png",
        "cls_name": "surface", "specie_name": "defect", "anomaly": 1}
    assert items["KolektorSDD2/test/20000.png"]["mask_path"] == "" and root.is_dir()


def test_ksdd2_missing_ground_truth_is_an_error_and_an_extra_one_a_warning(tmp_path):
    root = make_ksdd2(tmp_path)
    mask(root, "test/29999_GT.png")
    with pytest.warns(DatasetWarning, match="29999_GT.png"):
        build_meta("ksdd2", root)
    image(root, "test/20002.png")
    with pytest.raises(DatasetError, match=r"test/20002.png has no ground truth: expected test/20002_GT.png"):
        build_meta("ksdd2", root, warn=quiet)
    (root / "test/20002_GT.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"cannot read mask test/20002_GT.png"):
        build_meta("ksdd2", root, warn=quiet)


# --------------------------------------------------------------------------- RSDD

def jpeg_mask(root: Path, rel: str, size=(8, 6)) -> Path:
    """A JPEG mask as RSDD ships them: a 0/255 block blurred by compression."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas = np.zeros((size[1], size[0]), np.uint8)
    canvas[1:4, 2:6] = 255
    Image.fromarray(canvas).save(path, format="JPEG", quality=60)
    return path


def make_rsdd(root: Path) -> Path:
    for kind, stems in (("Type-I", ("rail_1", "rail_2")), ("Type-II", ("Rail_1",))):
        for stem in stems:
            image(root, f"RSDDs dataset/{kind} RSDDs dataset/Rail surface images/{stem}.jpg", size=(8, 6))
            jpeg_mask(root, f"RSDDs dataset/{kind} RSDDs dataset/GroundTruth/{stem}.jpg")
    return root


def test_rsdd_jpeg_masks_need_converting_first(tmp_path):
    root = make_rsdd(tmp_path)
    with pytest.raises(DatasetError, match=r"GroundTruth/ holds JPEG masks.*--convert_masks.*GroundTruth_png/"):
        build_meta("rsdd", root)


def test_rsdd_converted_masks_give_one_class_per_type(tmp_path):
    root = make_rsdd(tmp_path)
    lines, problems = convert("rsdd", root)
    assert not problems.errors and len(lines) == 2 and "2 mask(s) written" in lines[0]
    meta = build_meta("rsdd", root)
    check_meta(meta, root)
    assert counts(meta) == {"Type-I rail": (0, 2), "Type-II rail": (0, 1)}
    item = by_path(meta)["RSDDs dataset/Type-II RSDDs dataset/Rail surface images/Rail_1.jpg"]
    assert item["mask_path"] == "RSDDs dataset/Type-II RSDDs dataset/GroundTruth_png/Rail_1.png"
    assert item["specie_name"] == "defect"
    source = root / "RSDDs dataset/Type-I RSDDs dataset/GroundTruth/rail_1.jpg"
    converted = pixels(root / "RSDDs dataset/Type-I RSDDs dataset/GroundTruth_png/rail_1.png")
    assert set(np.unique(converted)) <= {0, 255}
    np.testing.assert_array_equal(converted > 0, np.asarray(Image.open(source).convert("L")) > 127)
    assert (converted[1:4, 2:6] == 255).all() and converted[5].max() == 0  # no ringing left as defect
    again, _ = convert("rsdd", root)
    assert "0 mask(s) written" in again[0] and "2 already there and kept" in again[0]


def test_rsdd_missing_and_extra_ground_truth(tmp_path):
    root = make_rsdd(tmp_path)
    kind = root / "RSDDs dataset/Type-I RSDDs dataset"
    (kind / "GroundTruth/rail_2.jpg").unlink()
    jpeg_mask(kind, "GroundTruth/rail_9.jpg")  # no image
    _, problems = convert("rsdd", root)
    assert any("GroundTruth/rail_9.jpg" in w for w in problems.warnings)
    with pytest.raises(DatasetError) as error:
        build_meta("rsdd", root, warn=quiet)
    message = str(error.value)
    assert "Rail surface images/rail_2.jpg has no mask" in message and "--convert_masks" in message


def test_rsdd_size_mismatch_is_an_error_and_lossless_masks_need_no_conversion(tmp_path):
    root = tmp_path / "Type-II RSDDs dataset"
    image(root, "Rail surface images/Rail_1.jpg", size=(8, 6))
    jpeg_mask(root, "GroundTruth/Rail_1.jpg", size=(6, 8))
    _, problems = convert("rsdd", root)
    assert problems.errors and "is 6x8 but its image" in problems.errors[0]
    (root / "GroundTruth/Rail_1.jpg").unlink()
    mask(root, "GroundTruth/Rail_1.png", size=(8, 6))
    meta = build_meta("rsdd", root)  # --root one type folder
    assert counts(meta) == {"Type-II rail": (0, 1)}
    assert meta["test"]["Type-II rail"][0]["mask_path"] == "GroundTruth/Rail_1.png"


# --------------------------------------------------------------------------- Road (CrackForest)

def crack_mat(root: Path, rel: str, labels: np.ndarray) -> Path:
    from scipy.io import savemat

    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"groundTruth": {"Segmentation": labels.astype(np.uint8),
                                   "Boundaries": np.zeros_like(labels, dtype=np.uint8)}})
    return path


def crack(width=5, height=4) -> np.ndarray:
    labels = np.ones((height, width), np.uint8)
    labels[2, 1:4] = 2
    return labels


def make_road(root: Path) -> Path:
    for stem in ("001", "002", "003"):
        image(root, f"image/{stem}.jpg", size=(5, 4))
    crack_mat(root, "groundTruth/001.mat", crack())
    crack_mat(root, "groundTruth/002.mat", crack())
    text(root, "seg/001.seg", "CrackForest's .seg files are not read\n")
    return root


def test_road_mat_masks_are_converted_then_paired(tmp_path):
    root = make_road(tmp_path / "CrackForest-dataset-master")
    with pytest.raises(DatasetError, match=r"groundTruth/ holds MATLAB ground truth.*--convert_masks"):
        build_meta("road", tmp_path)
    lines, problems = convert("road", tmp_path)
    assert not problems.errors and "groundTruth_png/: 2 mask(s) written" in lines[0]
    with pytest.warns(DatasetWarning, match=r"1 image\(s\) have no ground truth.*image/003.jpg"):
        meta = build_meta("road", tmp_path)
    check_meta(meta, tmp_path)
    assert counts(meta) == {"road": (0, 2)}
    item = by_path(meta)["CrackForest-dataset-master/image/001.jpg"]
    assert item["mask_path"] == "CrackForest-dataset-master/groundTruth_png/001.png" and item["specie_name"] == "crack"
    np.testing.assert_array_equal(pixels(root / "groundTruth_png/001.png"), np.where(crack() == 2, 255, 0))


def test_road_traps(tmp_path):
    root = make_road(tmp_path)
    crack_mat(root, "groundTruth/004.mat", crack())  # no image
    bad = crack()
    bad[0, 0] = 3
    crack_mat(root, "groundTruth/003.mat", bad)  # a label CrackForest does not use
    _, problems = convert("road", root)
    assert any("groundTruth/004.mat" in w for w in problems.warnings)
    assert len(problems.errors) == 1 and "values [1, 2, 3]" in problems.errors[0]
    crack_mat(root, "groundTruth/003.mat", crack(width=6))
    _, problems = convert("road", root)
    assert "groundTruth/003.mat is 6x4 but its image image/003.jpg is 5x4" in problems.errors[0]
    (root / "groundTruth/003.mat").unlink()
    (root / "groundTruth_png/002.png").unlink()
    with pytest.raises(DatasetError, match=r"image/002.jpg has no mask: expected groundTruth_png/002.png.*"
                                           r"--convert_masks` again"):
        build_meta("road", root, warn=quiet)
    assert not list(root.rglob("*.tmp")) and not list(root.rglob(".*.png"))


# --------------------------------------------------------------------------- MSD

def make_msd(root: Path) -> Path:
    image(root, "good/Good_0001.jpg")
    for label, stem, folder in (("oil", "Oil_0001", "ground_truth_2"), ("scratch", "Scr_0001", "ground_truth_1"),
                                ("stain", "Sta_0001", "ground_truth_1"), ("stain", "Sta_0002", "ground_truth_1")):
        image(root, f"{label}/{stem}.jpg")
        mask(root, f"{folder}/{stem}.png")
    return root


def test_msd_label_folders_share_their_mask_folders(tmp_path):
    root = make_msd(tmp_path)
    meta = build_meta("msd", root)
    check_meta(meta, root)
    assert counts(meta) == {"phone screen": (1, 4)}
    items = by_path(meta)
    assert items["oil/Oil_0001.jpg"]["mask_path"] == "ground_truth_2/Oil_0001.png"
    assert items["stain/Sta_0002.jpg"] == {"img_path": "stain/Sta_0002.jpg", "mask_path": "ground_truth_1/Sta_0002.png",
                                           "cls_name": "phone screen", "specie_name": "stain", "anomaly": 1}


def test_msd_traps(tmp_path):
    root = make_msd(tmp_path)
    mask(root, "ground_truth_2/Oil_0099.png")
    image(root, "Visualization/Oil_0001.jpg")
    seen: list[str] = []
    build_meta("msd", root, warn=seen.append)
    assert any("Oil_0099.png" in w for w in seen) and any("Visualization/" in w for w in seen)
    (root / "ground_truth_1/Sta_0002.png").unlink()
    with pytest.raises(DatasetError, match=r"stain/Sta_0002.jpg has no mask: expected ground_truth_1/Sta_0002.png"):
        build_meta("msd", root, warn=quiet)


def test_msd_pascal_voc_release(tmp_path):
    root = tmp_path / "MSD"
    for stem in ("Oil_0001", "Scr_0001"):
        image(root, f"JPEGImages/{stem}.jpg")
        mask(root, f"SegmentationClass/{stem}.png")
    text(root, "ImageSets/Segmentation/test.txt", "Oil_0001\nScr_0001\n")
    image(root, "good/Good_0001.jpg")
    meta = build_meta("msd", tmp_path)
    check_meta(meta, tmp_path)
    assert counts(meta) == {"phone screen": (1, 2)}
    (root / "SegmentationClass/Scr_0001.png").unlink()
    with pytest.raises(DatasetError, match="JPEGImages/Scr_0001.jpg has no mask"):
        build_meta("msd", tmp_path)


# --------------------------------------------------------------------------- BSD (BSData)

def labelme(root: Path, rel: str, shapes: list[dict], size=(6, 5)) -> Path:
    content = {"version": "4.5.6", "flags": {}, "shapes": shapes, "imagePath": Path(rel).stem + ".jpg",
               "imageData": None, "imageWidth": size[0], "imageHeight": size[1]}
    return text(root, rel, json.dumps(content))


def polygon(points, kind="polygon") -> dict:
    return {"label": "Pitting", "points": points, "group_id": None, "shape_type": kind, "flags": {}}


def make_bsd(root: Path) -> Path:
    for stem in ("01_200828110014_277500_315_crop_2", "01_200828110055_305000_090_crop_2",
                 "01_200902053521_585000_090_crop_1"):
        image(root, f"data/{stem}.jpg", size=(6, 5))
    labelme(root, "label/01_200828110014_277500_315_crop_2.json", [polygon([[1, 1], [3, 1], [3, 3], [1, 3]])])
    labelme(root, "label/01_200828110055_305000_090_crop_2.json", [polygon([[4, 0], [5, 1]], "rectangle")])
    text(root, "split_dataset.py", "# the authors' split script\n")
    return root


def test_bsd_lists_only_annotated_images_after_conversion(tmp_path):
    root = make_bsd(tmp_path / "BSData")
    with pytest.raises(DatasetError, match=r"label/ holds labelme polygons.*--convert_masks"):
        build_meta("bsd", tmp_path)
    lines, problems = convert("bsd", tmp_path)
    assert not problems.errors and "label_png/: 2 mask(s) written" in lines[0]
    with pytest.warns(DatasetWarning, match=r"1 image\(s\) have no BSData/label/\*.json.*defective images"):
        meta = build_meta("bsd", tmp_path)
    check_meta(meta, tmp_path)
    assert counts(meta) == {"ball screw": (0, 2)}
    item = by_path(meta)["BSData/data/01_200828110014_277500_315_crop_2.jpg"]
    assert item["mask_path"] == "BSData/label_png/01_200828110014_277500_315_crop_2.png"
    assert item["specie_name"] == "pitting"
    expected = np.zeros((5, 6), np.uint8)
    expected[1:4, 1:4] = 255  # the polygon with its outline, as labelme fills it
    np.testing.assert_array_equal(pixels(root / "label_png/01_200828110014_277500_315_crop_2.png"), expected)
    rectangle = np.zeros((5, 6), np.uint8)
    rectangle[0:2, 4:6] = 255
    np.testing.assert_array_equal(pixels(root / "label_png/01_200828110055_305000_090_crop_2.png"), rectangle)


def test_bsd_traps(tmp_path):
    root = make_bsd(tmp_path)
    labelme(root, "label/01_200902053521_585000_090_crop_1.json", [polygon([[0, 0], [5, 4]], "line")])
    labelme(root, "label/no_such_image.json", [polygon([[0, 0], [1, 0], [1, 1]])])
    _, problems = convert("bsd", root)
    assert any("label/no_such_image.json" in w for w in problems.warnings)
    assert len(problems.errors) == 1 and "shape 1 is a line with 2 point(s)" in problems.errors[0]
    labelme(root, "label/01_200902053521_585000_090_crop_1.json", [polygon([[0, 0], [1, 0], [1, 1]])], size=(9, 9))
    _, problems = convert("bsd", root)
    assert "was drawn on a 9x9 image but its image is 6x5" in problems.errors[0]
    with pytest.raises(DatasetError, match=r"data/01_200902053521_585000_090_crop_1.jpg has no mask: expected "
                                           r"label_png/01_200902053521_585000_090_crop_1.png"):
        build_meta("bsd", root, warn=quiet)


# --------------------------------------------------------------------------- GC10-DET

def test_gc10_without_masks_explains_what_is_not_public(tmp_path):
    image(tmp_path, "1/img_01_425382900_00001.jpg")
    text(tmp_path, "lable/img_01_425382900_00001.xml", "<annotation><object><bndbox><xmin>1</xmin><ymin>1</ymin>"
                                                        "<xmax>2</xmax><ymax>2</ymax></bndbox></object></annotation>")
    with pytest.raises(DatasetError) as error:
        build_meta("gc10", tmp_path)
    message = str(error.value)
    for words in ("bounding boxes only", "MobileSAM", "did not release", f"{tmp_path}/masks/{{stem}}.png",
                  "generate_dataset_json folder -h", "never turned into masks"):
        assert words in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "lable"]  # no mask was made from the boxes


def make_gc10(root: Path) -> Path:
    image(root, "1/img_01_425382900_00001.jpg")
    image(root, "2/img_02_425382900_00002.jpg")
    (root / "6").mkdir()
    (root / "6/img_01_425382900_00001.jpg").write_bytes((root / "1/img_01_425382900_00001.jpg").read_bytes())
    image(root, "3/img_03_425382900_00003.jpg")  # no box file: unlabelled
    for stem in ("img_01_425382900_00001", "img_02_425382900_00002"):
        text(root, f"lable/{stem}.xml", "<annotation/>")
    mask(root, "masks/img_01_425382900_00001.png")
    mask(root, "masks/img_02_425382900_00002_mask.png")
    return root


def test_gc10_with_your_masks(tmp_path):
    root = make_gc10(tmp_path)
    seen: list[str] = []
    meta = build_meta("gc10", root, warn=seen.append)
    check_meta(meta, root)
    assert counts(meta) == {"steel sheet": (0, 2)}
    assert by_path(meta)["1/img_01_425382900_00001.jpg"]["specie_name"] == "1"
    assert any("copies of an image in another folder" in w and "6/img_01_425382900_00001.jpg" in w for w in seen)
    assert any("have no box file" in w and "3/img_03_425382900_00003.jpg" in w for w in seen)
    (root / "lable").rename(root / "label_nested")
    (root / "label").mkdir()
    (root / "label_nested").rename(root / "label/label")  # the other Kaggle copy's nesting
    assert counts(build_meta("gc10", root, warn=quiet)) == {"steel sheet": (0, 2)}


def test_gc10_traps(tmp_path):
    root = make_gc10(tmp_path)
    mask(root, "masks/unrelated.png")
    seen: list[str] = []
    build_meta("gc10", root, warn=seen.append)
    assert any("masks/unrelated.png" in w and "have no image" in w for w in seen)
    (root / "masks/img_02_425382900_00002_mask.png").unlink()
    with pytest.raises(DatasetError, match=r"2/img_02_425382900_00002.jpg has no mask: expected "
                                           r"masks/img_02_425382900_00002.png.*make it"):
        build_meta("gc10", root, warn=quiet)
    mask(root, "masks/img_02_425382900_00002.png")
    image(root, "6/img_02_425382900_00002.jpg", size=(5, 5))  # same name, different picture
    with pytest.raises(DatasetError, match="share the name 'img_02_425382900_00002'"):
        build_meta("gc10", root, warn=quiet)


# --------------------------------------------------------------------------- the command

@pytest.mark.slow
def test_cli_convert_masks_then_writes_meta(tmp_path):
    root = make_road(tmp_path / "road")
    refused = run_cli("road", "--root", str(root))
    assert refused.returncode == 1 and "--convert_masks" in refused.stderr and "Traceback" not in refused.stderr
    assert not (root / "meta.json").exists() and not (root / "groundTruth_png").exists()
    result = run_cli("road", "--root", str(root), "--convert_masks")
    assert result.returncode == 0, result.stderr
    assert "groundTruth_png/: 2 mask(s) written" in result.stdout and "warning:" in result.stderr
    assert json.loads((root / "meta.json").read_text()) == build_meta("road", root, warn=quiet)
    (root / "groundTruth_png/002.png").unlink()
    again = run_cli("road", "--root", str(root), "--convert_masks")  # meta.json exists: refuses before converting
    assert again.returncode == 1 and "--overwrite" in again.stderr
    assert not (root / "groundTruth_png/002.png").exists()
    assert "--convert_masks" not in run_cli("ksdd2", "-h").stdout
