"""The `mvisa` command (the VCP-CLIP authors' meta_<dataset>.json, SPEC_VCP §11) and the
rule every command follows: an existing meta file is never replaced without
`--overwrite`, and then the old one is kept as `<name>.bak`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dataset_trees import REPO, image, mask, run_cli, text
from generate_dataset_json import DatasetError, DatasetWarning, write_meta
from generate_dataset_json.mvisa import build_mvisa_meta

# A copy of reference/vcp_tiny/data: the tree and the meta_mvtec.json that the
# authors' make_meta.py wrote for it.
FIXTURE = REPO / "tests/fixtures/vcp_tiny/data"  # the VCP-CLIP fixture is in the authors' layout
MVISA_KEYS = ["img_path", "mask_path", "cls_name", "specie_name", "dataset_name", "anomaly"]


def make_mvisa(data: Path, dataset: str = "mvtec") -> Path:
    """Two classes in the authors' layout, files created out of order."""
    for name in ("mvtec_hole_000004.bmp", "mvtec_crack_000002.bmp"):
        image(data, f"{dataset}/wood/test/anomaly/{name}")
        mask(data, f"{dataset}/wood/ground_truth/anomaly/{name[:-4]}.png")
    image(data, f"{dataset}/wood/test/good/mvtec_good_000003.bmp")
    image(data, f"{dataset}/wood/test/good/mvtec_good_000001.bmp")
    image(data, f"{dataset}/wood/train/good/mvtec_000005.bmp")
    image(data, f"{dataset}/bottle/test/anomaly/mvtec_broken_000006.bmp")
    mask(data, f"{dataset}/bottle/ground_truth/anomaly/mvtec_broken_000006.png")
    image(data, f"{dataset}/bottle/test/good/mvtec_good_000007.bmp")
    (data / dataset / "bottle/train/good").mkdir(parents=True)  # empty: make_meta.py's placeholder
    return data


def paths(items: list[dict]) -> list[str]:
    return [item["img_path"] for item in items]


# --------------------------------------------------------------------------- make_meta.py's output

def test_fixture_meta_is_reproduced_item_for_item_and_byte_for_byte(tmp_path):
    reference_text = (FIXTURE / "meta_mvtec.json").read_text()
    meta = build_mvisa_meta(FIXTURE, "mvtec")
    assert meta == json.loads(reference_text)
    assert write_meta(meta, tmp_path / "meta_mvtec.json").read_text() == reference_text


def test_fixture_meta_is_in_sorted_order():
    """The shipped file is in make_meta.py's order (species sorted, then names sorted),
    not the other order SPEC_VCP §11 warns about for the files in the authors' repository."""
    reference = json.loads((FIXTURE / "meta_mvtec.json").read_text())
    for phase, classes in reference.items():
        assert list(classes) == sorted(classes)
        for items in classes.values():
            keys = [(item["specie_name"], Path(item["img_path"]).name) for item in items]
            assert keys == sorted(keys)


def test_items_keys_paths_and_order(tmp_path):
    data = make_mvisa(tmp_path)
    meta = build_mvisa_meta(data, "mvtec", warn=lambda message: None)
    assert list(meta) == ["train", "test"] and list(meta["test"]) == ["bottle", "wood"]
    assert paths(meta["test"]["wood"]) == [
        "mvtec/wood/test/anomaly/mvtec_crack_000002.bmp", "mvtec/wood/test/anomaly/mvtec_hole_000004.bmp",
        "mvtec/wood/test/good/mvtec_good_000001.bmp", "mvtec/wood/test/good/mvtec_good_000003.bmp"]
    first = meta["test"]["wood"][0]
    assert list(first) == MVISA_KEYS
    assert first == {"img_path": "mvtec/wood/test/anomaly/mvtec_crack_000002.bmp",
                     "mask_path": "mvtec/wood/ground_truth/anomaly/mvtec_crack_000002.png",
                     "cls_name": "wood", "specie_name": "anomaly", "dataset_name": "mvtec", "anomaly": 1}
    assert meta["test"]["wood"][2]["mask_path"] == "" and meta["test"]["wood"][2]["anomaly"] == 0
    assert meta["train"]["wood"] == [{"img_path": "mvtec/wood/train/good/mvtec_000005.bmp", "mask_path": "",
                                      "cls_name": "wood", "specie_name": "good", "dataset_name": "mvtec",
                                      "anomaly": 0}]


def test_empty_train_folder_gives_make_meta_placeholder_with_a_warning(tmp_path):
    data = make_mvisa(tmp_path)
    with pytest.warns(DatasetWarning, match="mvtec/bottle/train/good/ is empty: wrote a placeholder"):
        meta = build_mvisa_meta(data, "mvtec")
    assert meta["train"]["bottle"] == [{"img_path": "", "mask_path": "", "cls_name": "bottle",
                                        "specie_name": "good", "dataset_name": "", "anomaly": 0}]
    assert build_mvisa_meta(data, "mvtec", placeholders=False)["train"]["bottle"] == []


def test_dataset_name_is_the_file_name_up_to_its_first_underscore(tmp_path):
    image(tmp_path, "ksdd2/surface/test/good/10301.png")
    image(tmp_path, "ksdd2/surface/test/anomaly/visa_pcb1_0001.bmp")
    mask(tmp_path, "ksdd2/surface/ground_truth/anomaly/visa_pcb1_0001.png")
    with pytest.warns(DatasetWarning, match="ksdd2/surface/train/ does not exist"):
        meta = build_mvisa_meta(tmp_path, "ksdd2")
    assert [item["dataset_name"] for item in meta["test"]["surface"]] == ["visa", "10301.png"]
    assert meta["train"] == {"surface": []}


def test_non_bmp_images_get_their_png_mask(tmp_path):
    """make_meta.py only turns `.bmp` into `.png`; a `.jpg` image's mask is `{stem}.png`."""
    image(tmp_path, "rsdd/rail/test/anomaly/rail_1.jpg")
    mask(tmp_path, "rsdd/rail/ground_truth/anomaly/rail_1.png")
    image(tmp_path, "rsdd/rail/test/anomaly/rail_2.png")
    mask(tmp_path, "rsdd/rail/ground_truth/anomaly/rail_2.png")
    meta = build_mvisa_meta(tmp_path, "rsdd", warn=lambda message: None)
    assert [item["mask_path"] for item in meta["test"]["rail"]] == [
        "rsdd/rail/ground_truth/anomaly/rail_1.png", "rsdd/rail/ground_truth/anomaly/rail_2.png"]


def test_missing_mask_is_an_error_naming_image_and_mask(tmp_path):
    data = make_mvisa(tmp_path)
    (data / "mvtec/wood/ground_truth/anomaly/mvtec_hole_000004.png").unlink()
    with pytest.raises(DatasetError) as error:
        build_mvisa_meta(data, "mvtec", warn=lambda message: None)
    assert str(error.value) == ("anomalous image mvtec/wood/test/anomaly/mvtec_hole_000004.bmp has no mask: "
                                "expected mvtec/wood/ground_truth/anomaly/mvtec_hole_000004.png; "
                                "restore it or remove the image")


def test_extra_files_and_orphan_masks_are_warnings_not_items(tmp_path):
    data = make_mvisa(tmp_path)
    text(data, "mvtec/wood/test/good/readme.txt")
    text(data, "mvtec/wood/test/good/.DS_Store")
    text(data, "mvtec/wood/test/notes.txt")
    mask(data, "mvtec/wood/ground_truth/anomaly/mvtec_hole_000099.png")
    text(data, "mvtec/license.txt")
    (data / "mvtec/unpacked_elsewhere").mkdir()
    seen: list[str] = []
    meta = build_mvisa_meta(data, "mvtec", warn=seen.append)
    assert len(meta["test"]["wood"]) == 4 and "unpacked_elsewhere" not in meta["test"]
    joined = " | ".join(seen)
    assert "mvtec/wood/test/good/readme.txt" in joined and ".DS_Store" not in joined
    assert "mvtec/wood/test/notes.txt" in joined
    assert "mvtec/wood/ground_truth/anomaly/mvtec_hole_000099.png" in joined
    assert "mvtec/unpacked_elsewhere/" in joined


def test_class_without_test_images_and_bad_arguments_are_errors(tmp_path):
    data = make_mvisa(tmp_path)
    meta = build_mvisa_meta(data, "mvtec/", placeholders=False)  # the trailing slash of tab completion
    assert meta["test"]["wood"][0]["img_path"].startswith("mvtec/wood/")
    (data / "mvtec/empty/test/good").mkdir(parents=True)
    with pytest.raises(DatasetError, match="class 'empty' has no test images"):
        build_mvisa_meta(data, "mvtec", warn=lambda message: None)
    with pytest.raises(DatasetError, match="must be the name of one folder"):
        build_mvisa_meta(data, "data/mvtec")
    with pytest.raises(DatasetError, match="is not a folder: --root is the folder that holds visa/"):
        build_mvisa_meta(data, "visa")


# --------------------------------------------------------------------------- the command, and --overwrite

@pytest.mark.slow
def test_cli_mvisa_writes_meta_beside_the_dataset(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(FIXTURE / "mvtec", data / "mvtec")
    result = run_cli("mvisa", "--root", str(data), "--dataset", "mvtec")
    assert result.returncode == 0, result.stderr
    assert (data / "meta_mvtec.json").read_text() == (FIXTURE / "meta_mvtec.json").read_text()
    assert f"wrote {data / 'meta_mvtec.json'}" in result.stdout and "total (3 classes)" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("command", ["mvisa", "mvtec", "synthetic"])
def test_cli_refuses_to_replace_a_meta_file_and_overwrite_keeps_a_backup(tmp_path, command):
    if command == "mvisa":
        root = make_mvisa(tmp_path / "data")
        args, meta_file = ["--dataset", "mvtec"], root / "meta_mvtec.json"
    elif command == "mvtec":
        root = tmp_path / "mvtec"
        image(root, "wood/test/good/000.png")
        args, meta_file = [], root / "meta.json"
    else:
        root, args = tmp_path / "synth", ["--n_normal", "1", "--n_anomalous", "1", "--size", "8"]
        meta_file = root / "meta.json"
    hand_edited = '{"train": {}, "test": {"edited": []}}\n'
    meta_file.parent.mkdir(parents=True, exist_ok=True)
    meta_file.write_text(hand_edited)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))

    refused = run_cli(command, "--root", str(root), *args)
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()]  # one line
    assert str(meta_file) in refused.stderr and "--overwrite" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert meta_file.read_text() == hand_edited
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing written at all

    replaced = run_cli(command, "--root", str(root), *args, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    backup = meta_file.with_name(meta_file.name + ".bak")
    assert backup.read_text() == hand_edited
    assert json.loads(meta_file.read_text()) != json.loads(hand_edited)
    assert f"the previous file is kept as {backup}" in replaced.stdout
    assert not [p for p in meta_file.parent.iterdir() if p.name.endswith(".tmp")]
