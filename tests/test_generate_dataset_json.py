"""generate_dataset_json: a tiny tree per layout, including the traps real downloads
set (a missing or an extra mask, mixed and upper-case extensions, unlabelled folders,
text files), checked through build_meta and through the command a user types."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dataset_trees import REPO, by_path, check_meta, counts, image, mask, run_cli, text
from generate_dataset_json import DATASETS, DatasetError, DatasetWarning, build_meta, write_meta

BENCHMARKS = ("mvtec", "visa", "mpdd", "btad", "ksdd", "dagm", "dtd", "headct", "brainmri", "br35h",
              "isic", "colondb", "clinicdb", "kvasir", "endo")
VCP_BENCHMARKS = ("ksdd2", "rsdd", "road", "msd", "bsd", "gc10")  # tested in test_vcp_datasets.py


# --------------------------------------------------------------------------- tree builders

def make_mvtec(root: Path) -> Path:
    """Two classes of a partial MVTec AD download, with the archive's text files."""
    text(root, "readme.txt")
    text(root, "license.txt")
    for i in range(3):
        image(root, f"bottle/train/good/{i:03d}.png")
    for i in range(2):
        image(root, f"bottle/test/good/{i:03d}.png")
    for i in range(3):
        image(root, f"bottle/test/broken_large/{i:03d}.png")
        mask(root, f"bottle/ground_truth/broken_large/{i:03d}_mask.png")
    image(root, "bottle/test/contamination/000.png")
    mask(root, "bottle/ground_truth/contamination/000_mask.png")
    image(root, "wood/test/good/000.png")
    image(root, "wood/test/scratch/000.png")
    mask(root, "wood/ground_truth/scratch/000_mask.png")
    return root


# --------------------------------------------------------------------------- registry

def test_registry_lists_every_benchmark_plus_folder():
    assert set(BENCHMARKS) | set(VCP_BENCHMARKS) | {"folder"} == set(DATASETS)
    for spec in DATASETS.values():
        assert spec.layout and spec.title
        assert spec.url or spec.name == "folder"
    fixed = {name: DATASETS[name].class_name for name in BENCHMARKS + VCP_BENCHMARKS if DATASETS[name].class_name}
    assert fixed == {"ksdd": "electrical commutators", "headct": "brain", "brainmri": "brain", "br35h": "brain",
                     "isic": "skin", "colondb": "colon", "clinicdb": "colon", "kvasir": "colon", "endo": "colon",
                     "ksdd2": "surface", "road": "road", "msd": "phone screen", "bsd": "ball screw",
                     "gc10": "steel sheet"}


def test_unknown_dataset_name_lists_the_choices(tmp_path):
    with pytest.raises(DatasetError, match="choose one of mvtec, visa"):
        build_meta("mvtec2", tmp_path)


def test_missing_root_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match="is not a folder"):
        build_meta("mvtec", tmp_path / "nowhere")


# --------------------------------------------------------------------------- MVTec-like

@pytest.mark.parametrize("name", ["mvtec", "mpdd", "dtd"])
def test_mvtec_like_partial_download(tmp_path, name):
    root = make_mvtec(tmp_path)
    meta = build_meta(name, root)
    check_meta(meta, root)
    assert counts(meta) == {"bottle": (2, 4), "wood": (1, 1)}
    assert counts(meta, "train") == {"bottle": (3, 0), "wood": (0, 0)}
    item = by_path(meta)["bottle/test/broken_large/001.png"]
    assert item == {"img_path": "bottle/test/broken_large/001.png",
                    "mask_path": "bottle/ground_truth/broken_large/001_mask.png",
                    "cls_name": "bottle", "specie_name": "broken_large", "anomaly": 1}
    assert by_path(meta)["bottle/test/good/000.png"]["specie_name"] == "good"


def test_missing_mask_is_an_error_naming_the_image(tmp_path):
    root = make_mvtec(tmp_path)
    (root / "bottle/ground_truth/broken_large/001_mask.png").unlink()
    with pytest.raises(DatasetError) as error:
        build_meta("mvtec", root)
    message = str(error.value)
    assert "bottle/test/broken_large/001.png" in message
    assert "bottle/ground_truth/broken_large/001_mask.png" in message  # the name it should have
    assert "000.png" not in message and "002.png" not in message  # their masks did not shift


def test_missing_mask_folder_names_every_image(tmp_path):
    root = make_mvtec(tmp_path)
    for path in (root / "bottle/ground_truth/broken_large").iterdir():
        path.unlink()
    (root / "bottle/ground_truth/broken_large").rmdir()
    with pytest.raises(DatasetError, match="3 problems") as error:
        build_meta("mvtec", root)
    assert all(f"broken_large/{i:03d}.png" in str(error.value) for i in range(3))


def test_extra_mask_is_a_warning_and_pairs_stay_by_name(tmp_path):
    root = make_mvtec(tmp_path)
    mask(root, "bottle/ground_truth/broken_large/000a_mask.png")  # sorts between 000 and 001
    mask(root, "bottle/ground_truth/gone/000_mask.png")  # a mask folder without test images
    with pytest.warns(DatasetWarning) as caught:
        meta = build_meta("mvtec", root)
    messages = " ".join(str(w.message) for w in caught)
    assert "000a_mask.png" in messages and "bottle/ground_truth/gone/" in messages
    check_meta(meta, root)
    assert by_path(meta)["bottle/test/broken_large/001.png"]["mask_path"].endswith("/001_mask.png")


def test_root_that_is_not_mvtec_says_what_it_expected(tmp_path):
    image(tmp_path, "bottle/good/000.png")
    with pytest.raises(DatasetError, match=r"does not look like MVTec AD: expected \{cls\}/test/ folders"):
        build_meta("mvtec", tmp_path)


def test_root_can_be_one_class_folder(tmp_path):
    root = make_mvtec(tmp_path) / "wood"
    meta = build_meta("mvtec", root)
    check_meta(meta, root)
    assert counts(meta) == {"wood": (1, 1)}
    assert by_path(meta)["test/scratch/000.png"]["mask_path"] == "ground_truth/scratch/000_mask.png"


def test_class_without_test_images_is_an_error(tmp_path):
    root = make_mvtec(tmp_path)
    (root / "empty/test/good").mkdir(parents=True)
    with pytest.raises(DatasetError, match="class 'empty' has no test images"):
        build_meta("mvtec", root)


def test_two_images_with_one_stem_are_an_error(tmp_path):
    root = make_mvtec(tmp_path)
    image(root, "wood/test/scratch/000.bmp")
    with pytest.raises(DatasetError, match="share the name '000'"):
        build_meta("mvtec", root)


def test_archive_debris_is_ignored(tmp_path):
    root = make_mvtec(tmp_path)
    text(root, "bottle/test/good/._000.png", "resource fork")
    text(root, "bottle/test/good/Thumbs.db")
    image(root, "__MACOSX/bottle/test/good/000.png")
    assert counts(build_meta("mvtec", root)) == {"bottle": (2, 4), "wood": (1, 1)}


def test_btad_mixed_extensions_and_mask_names(tmp_path):
    """BTAD: `ok`/`ko`, `.bmp` images, masks `.png` or `.bmp` with the image's own stem
    (or `_mask`, as in the reference fixture)."""
    for i in range(2):
        image(tmp_path, f"01/train/ok/{i:04d}.bmp")
        image(tmp_path, f"01/test/ok/{i + 2:04d}.bmp")
        image(tmp_path, f"01/test/ko/{i:04d}.bmp")
        mask(tmp_path, f"01/ground_truth/ko/{i:04d}.png")
    image(tmp_path, "02/test/ok/0000.png")
    image(tmp_path, "02/test/ko/0001.png")
    mask(tmp_path, "02/ground_truth/ko/0001.bmp")
    image(tmp_path, "03/test/ko/0005.bmp")
    mask(tmp_path, "03/ground_truth/ko/0005_mask.png")
    meta = build_meta("btad", tmp_path)
    check_meta(meta, tmp_path)
    assert counts(meta) == {"01": (2, 2), "02": (1, 1), "03": (0, 1)}
    assert counts(meta, "train") == {"01": (2, 0), "02": (0, 0), "03": (0, 0)}
    items = by_path(meta)
    assert items["01/test/ko/0001.bmp"]["mask_path"] == "01/ground_truth/ko/0001.png"
    assert items["02/test/ko/0001.png"]["mask_path"] == "02/ground_truth/ko/0001.bmp"
    assert items["03/test/ko/0005.bmp"]["mask_path"] == "03/ground_truth/ko/0005_mask.png"


def test_btad_fixture_gives_the_reference_meta():
    """The reference wrote the fixture's meta.json; the same items come out (we sort by path)."""
    root = REPO / "tests/fixtures/vip2_tiny/data"
    reference = json.loads((root / "meta.json").read_text())
    meta = build_meta("btad", root)
    for split in ("train", "test"):
        assert meta[split] == {cls: sorted(items, key=lambda i: i["img_path"])
                               for cls, items in reference[split].items()}


def test_ksdd_is_one_class_named_electrical_commutators(tmp_path):
    image(tmp_path, "ksdd/train/good/kos01_Part0.png")
    image(tmp_path, "ksdd/test/good/kos02_Part1.png")
    image(tmp_path, "ksdd/test/defect/kos03_Part5.png")
    mask(tmp_path, "ksdd/ground_truth/defect/kos03_Part5_mask.png")
    meta = build_meta("ksdd", tmp_path)
    check_meta(meta, tmp_path)
    assert counts(meta) == {"electrical commutators": (1, 1)}
    assert counts(meta, "train") == {"electrical commutators": (1, 0)}
    image(tmp_path, "other/test/good/000.png")
    with pytest.raises(DatasetError, match="single class"):
        build_meta("ksdd", tmp_path)


# --------------------------------------------------------------------------- DAGM

def test_dagm_labels_come_from_label_files(tmp_path):
    """Upper-case `.PNG`, masks in `Label/` with `_label`, `Labels.txt` beside them;
    images without a mask are normal; Train/ fills the train split."""
    for split, defects in (("Train", {"0002"}), ("Test", {"0011", "0013"})):
        for n in range(1, 4) if split == "Train" else range(11, 15):
            stem = f"{n:04d}"
            image(tmp_path, f"Class1/{split}/{stem}.PNG")
            if stem in defects:
                mask(tmp_path, f"Class1/{split}/Label/{stem}_label.PNG")
        text(tmp_path, f"Class1/{split}/Label/Labels.txt", "1\n0002\t1\t0002_label.PNG\n")
    image(tmp_path, "Class2/Test/0001.PNG")
    mask(tmp_path, "Class2/Test/Label/0001_label.PNG")
    mask(tmp_path, "Class2/Test/Label/0099_label.PNG")  # no image: a warning
    with pytest.warns(DatasetWarning, match="0099_label.PNG"):
        meta = build_meta("dagm", tmp_path)
    check_meta(meta, tmp_path)
    assert counts(meta) == {"Class1": (2, 2), "Class2": (0, 1)}
    assert counts(meta, "train") == {"Class1": (2, 1), "Class2": (0, 0)}
    item = by_path(meta)["Class1/Test/0013.PNG"]
    assert item["mask_path"] == "Class1/Test/Label/0013_label.PNG" and item["specie_name"] == "defect"


# --------------------------------------------------------------------------- VisA

VISA_HEADER = "object,split,label,image,mask\n"


def make_visa(root: Path) -> Path:
    rows = []
    for obj in ("candle", "pcb1"):
        for n, (split, label) in enumerate([("train", "normal"), ("train", "normal"), ("test", "normal"),
                                            ("test", "anomaly"), ("test", "anomaly")]):
            folder = "Normal" if label == "normal" else "Anomaly"
            img = image(root, f"{obj}/Data/Images/{folder}/{n:03d}.JPG")
            mask_rel = ""
            if label == "anomaly":
                mask_rel = f"{obj}/Data/Masks/Anomaly/{n:03d}.png"
                mask(root, mask_rel)
            rows.append(f"{obj},{split},{label},{img.relative_to(root).as_posix()},{mask_rel}")
    rows.append("fryum,test,normal,fryum/Data/Images/Normal/000.JPG,")  # not downloaded
    text(root, "split_csv/1cls.csv", VISA_HEADER + "\n".join(rows) + "\n")
    return root


def test_visa_reads_both_splits_from_the_csv(tmp_path):
    root = make_visa(tmp_path)
    with pytest.warns(DatasetWarning, match="fryum"):
        meta = build_meta("visa", root)
    check_meta(meta, root)
    assert counts(meta) == {"candle": (1, 2), "pcb1": (1, 2)}
    assert counts(meta, "train") == {"candle": (2, 0), "pcb1": (2, 0)}
    assert by_path(meta)["pcb1/Data/Images/Anomaly/004.JPG"]["mask_path"] == "pcb1/Data/Masks/Anomaly/004.png"


@pytest.mark.filterwarnings("ignore:split_csv/1cls.csv lists object")
def test_visa_missing_mask_and_missing_csv_are_errors(tmp_path):
    root = make_visa(tmp_path)
    (root / "candle/Data/Masks/Anomaly/003.png").unlink()
    with pytest.raises(DatasetError, match="candle/Data/Images/Anomaly/003.JPG has no mask"):
        build_meta("visa", root)
    (root / "split_csv/1cls.csv").unlink()
    with pytest.raises(DatasetError, match="does not look like VisA: expected split_csv/1cls.csv"):
        build_meta("visa", root)


# --------------------------------------------------------------------------- medical, image-level

def test_headct_ids_map_to_zero_padded_file_names(tmp_path):
    for n in range(4):
        image(tmp_path, f"head_ct/head_ct/{n:03d}.png")
    image(tmp_path, "head_ct/head_ct/100.png")  # not in labels.csv: ignored with a warning
    text(tmp_path, "labels.csv", "id, hemorrhage\n0,1\n1,1\n2,0\n3,0\n")
    with pytest.warns(DatasetWarning, match="100.png"):
        meta = build_meta("headct", tmp_path)
    check_meta(meta, tmp_path, masks="none")
    assert counts(meta) == {"brain": (2, 2)} and meta["train"] == {"brain": []}
    items = by_path(meta)
    assert items["head_ct/head_ct/000.png"]["anomaly"] == 1 and items["head_ct/head_ct/003.png"]["anomaly"] == 0


def test_headct_id_without_image_is_an_error(tmp_path):
    image(tmp_path, "000.png")
    text(tmp_path, "labels.csv", "id,hemorrhage\n0,0\n7,1\n")
    with pytest.raises(DatasetError, match="id 7 needs exactly one image named 007.png"):
        build_meta("headct", tmp_path)


def test_brainmri_yes_and_no_folders(tmp_path):
    root = tmp_path / "brain_tumor_dataset"
    for name in ("1 no.jpeg", "N2.JPG", "no 3.jpg"):
        image(root, f"no/{name}")
    for name in ("Y1.jpg", "Y2.JPG"):
        image(root, f"yes/{name}")
    text(root, "readme.txt")
    meta = build_meta("brainmri", tmp_path)
    check_meta(meta, tmp_path, masks="none")
    assert counts(meta) == {"brain": (3, 2)}
    assert by_path(meta)["brain_tumor_dataset/yes/Y2.JPG"]["specie_name"] == "yes"


def test_br35h_ignores_the_unlabelled_pred_folder(tmp_path):
    for n in range(3):
        image(tmp_path, f"no/no{n}.jpg")
        image(tmp_path, f"yes/y{n}.jpg")
        image(tmp_path, f"pred/pred{n}.jpg")
    image(tmp_path, "pred/nested/p.jpg")
    with pytest.warns(DatasetWarning, match="pred/"):
        meta = build_meta("br35h", tmp_path)
    check_meta(meta, tmp_path, masks="none")
    assert counts(meta) == {"brain": (3, 3)}
    assert not any("pred" in path for path in by_path(meta))


# --------------------------------------------------------------------------- medical, pixel-level

def test_isic_pairs_segmentation_masks_across_folders(tmp_path):
    for stem in ("ISIC_0000003", "ISIC_0000012", "ISIC_0000013"):
        image(tmp_path, f"ISBI2016_ISIC_Part1_Test_Data/{stem}.jpg")
        mask(tmp_path, f"ISBI2016_ISIC_Part1_Test_GroundTruth/{stem}_Segmentation.png")
    text(tmp_path, "ISBI2016_ISIC_Part1_Test_GroundTruth/license.txt")
    meta = build_meta("isic", tmp_path)
    check_meta(meta, tmp_path)
    assert counts(meta) == {"skin": (0, 3)}
    (tmp_path / "ISBI2016_ISIC_Part1_Test_GroundTruth/ISIC_0000012_Segmentation.png").unlink()
    with pytest.raises(DatasetError, match="ISBI2016_ISIC_Part1_Test_Data/ISIC_0000012.jpg has no mask"):
        build_meta("isic", tmp_path)


@pytest.mark.parametrize("name", ["colondb", "clinicdb", "kvasir"])
def test_polyp_sets_pair_by_name_not_by_order(tmp_path, name):
    root = tmp_path / "Kvasir-SEG"  # archives unpack into a folder of their own
    for stem in ("1", "3", "cju0qkwl35piu0993l0dewei2"):
        image(root, f"images/{stem}.jpg")
        mask(root, f"masks/{stem}.jpg")
    mask(root, "masks/2.jpg")  # sorts between 1 and 3: a sort-order pairing would shift
    text(root, "kavsir_bboxes.json", "{}")
    with pytest.warns(DatasetWarning, match="masks/2.jpg"):
        meta = build_meta(name, tmp_path)
    check_meta(meta, tmp_path)
    assert counts(meta) == {"colon": (0, 3)}
    assert by_path(meta)["Kvasir-SEG/images/3.jpg"]["mask_path"] == "Kvasir-SEG/masks/3.jpg"


def test_polyp_set_without_masks_folder_is_an_error(tmp_path):
    image(tmp_path, "images/1.png")
    with pytest.raises(DatasetError, match="does not look like CVC-ColonDB: expected images/ and masks/"):
        build_meta("colondb", tmp_path)


def test_endotect_image_folders_plus_masks(tmp_path):
    image(tmp_path, "images/polyps/a.jpg")
    image(tmp_path, "images/polyps/b.jpg")
    image(tmp_path, "other/c.jpg")
    for stem in "abc":
        mask(tmp_path, f"masks/{stem}.png")
    meta = build_meta("endo", tmp_path)
    check_meta(meta, tmp_path)
    assert counts(meta) == {"colon": (0, 3)}
    image(tmp_path, "other/a.jpg")  # the same name in two image folders: which mask?
    with pytest.raises(DatasetError, match="share the name 'a'"):
        build_meta("endo", tmp_path)


# --------------------------------------------------------------------------- generic folder

def test_folder_with_images_and_masks(tmp_path):
    root = tmp_path / "my_parts"
    image(root, "images/x.png")
    mask(root, "masks/x.png")
    meta = build_meta("folder", root)
    check_meta(meta, root)
    assert counts(meta) == {"my_parts": (0, 1)}


def test_folder_good_and_defect_folders_with_and_without_masks(tmp_path):
    image(tmp_path, "screws/good/0.png")
    image(tmp_path, "screws/bent/1.png")
    mask(tmp_path, "screws/masks/bent/1_mask.png")
    image(tmp_path, "nuts/good/0.png")
    image(tmp_path, "nuts/cracked/5.png")  # no mask folder at all: image-level class
    meta = build_meta("folder", tmp_path)
    check_meta(meta, tmp_path, masks="optional")
    items = by_path(meta)
    assert counts(meta) == {"nuts": (1, 1), "screws": (1, 1)}
    assert items["screws/bent/1.png"]["mask_path"] == "screws/masks/bent/1_mask.png"
    assert items["nuts/cracked/5.png"]["mask_path"] == ""


def test_folder_accepts_the_usual_normal_folder_names(tmp_path):
    image(tmp_path, "parts/ok/0.png")
    image(tmp_path, "parts/scratch/1.png")
    image(tmp_path, "gears/normal/0.png")
    image(tmp_path, "gears/dent/1.png")
    meta = build_meta("folder", tmp_path)
    assert counts(meta) == {"gears": (1, 1), "parts": (1, 1)}
    assert by_path(meta)["parts/ok/0.png"]["anomaly"] == 0


def test_images_nested_inside_a_label_folder_are_reported(tmp_path):
    root = make_mvtec(tmp_path)
    image(root, "bottle/test/broken_large/nested/004.png")
    warnings_seen = []
    build_meta("mvtec", root, warn=warnings_seen.append)
    assert any("bottle/test/broken_large/nested/" in w and "one level deep" in w for w in warnings_seen)


# --------------------------------------------------------------------------- output

def test_output_is_deterministic_and_sorted(tmp_path):
    root = make_mvtec(tmp_path)
    first, second = build_meta("mvtec", root), build_meta("mvtec", root)
    assert json.dumps(first) == json.dumps(second)
    assert list(first["test"]) == ["bottle", "wood"]


def test_write_meta_is_atomic(tmp_path):
    target = tmp_path / "meta.json"
    target.write_text('{"old": true}')
    with pytest.raises(TypeError):
        write_meta({"test": {"x": [object()]}}, target)  # fails half-way through the dump
    assert json.loads(target.read_text()) == {"old": True}
    write_meta({"train": {}, "test": {}}, target)
    assert json.loads(target.read_text()) == {"train": {}, "test": {}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]  # no temporary file left
    assert target.stat().st_mode & 0o044  # readable by others, unlike mkstemp's default


# --------------------------------------------------------------------------- the command

@pytest.mark.slow
def test_cli_writes_meta_and_prints_counts(tmp_path):
    root = make_mvtec(tmp_path / "mvtec")
    result = run_cli("mvtec", "--root", str(root))
    assert result.returncode == 0, result.stderr
    assert json.loads((root / "meta.json").read_text()) == build_meta("mvtec", root)
    lines = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line.strip()}
    assert lines["bottle"] == ["2", "4", "3", "0"] and lines["wood"] == ["1", "1", "0", "0"]
    assert "test normal" in result.stdout and "total" in result.stdout


@pytest.mark.slow
def test_cli_out_flag_and_warnings(tmp_path):
    root = make_mvtec(tmp_path / "mvtec")
    mask(root, "wood/ground_truth/scratch/777_mask.png")
    out = tmp_path / "elsewhere/meta.json"
    result = run_cli("mvtec", "--root", str(root), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "warning:" in result.stderr and "777_mask.png" in result.stderr
    assert out.is_file() and not (root / "meta.json").exists()


@pytest.mark.slow
def test_cli_errors_exit_non_zero_and_write_nothing(tmp_path):
    root = make_mvtec(tmp_path / "mvtec")
    (root / "wood/ground_truth/scratch/000_mask.png").unlink()
    result = run_cli("mvtec", "--root", str(root))
    assert result.returncode == 1
    assert "error:" in result.stderr and "wood/test/scratch/000.png" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (root / "meta.json").exists()
    assert run_cli("mvtec", "--root", str(tmp_path / "missing")).returncode == 1
    assert run_cli("nosuchset", "--root", str(root)).returncode == 2


@pytest.mark.slow
def test_cli_help_names_layout_and_download(tmp_path):
    result = run_cli("dagm", "--help")
    assert result.returncode == 0
    assert "Label/{stem}_label.PNG" in result.stdout and "Download:" in result.stdout
