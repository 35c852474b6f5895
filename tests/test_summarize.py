"""summarize.py: results.json files into the paper's tables, beside the paper's values (from its one registry)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import summarize
from models import get_method, method_names
from models.paper import NO_TRAINING, training_datasets

VIP2 = get_method("vip2").paper_tables()
VCP = get_method("vcp").paper_tables()

MVTEC = {"pixel_auroc": 0.9123, "pixel_ap": 0.40, "pixel_f1": 0.4449, "pixel_aupro": 0.8562,
         "image_auroc": 0.9051, "image_ap": 0.9712, "image_f1": None}  # null: undefined in that run
HEADCT = {"image_auroc": 0.9468, "image_ap": 0.9010, "image_f1": 0.8810}


def write_results(folder: Path, dataset: str, mean: dict, pro_mode: str = "official") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "results.json"
    path.write_text(json.dumps({"dataset": dataset, "checkpoint": "ckpt.pth", "pro_mode": pro_mode,
                                "settings": {}, "metrics": {"some_class": mean, "mean": mean}}))
    return path


def table_rows(summary: str, heading: str) -> list[list[str]]:
    """The body rows of the table under `heading`, as lists of cell strings."""
    lines = summary.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("###") and heading in line)
    rows = []
    for line in lines[start + 4:]:  # heading, blank, header, separator
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def row_values(row: list[str]) -> list[float | None]:
    return [None if cell == summarize.MISSING else float(cell) for cell in row[2:]]


@pytest.fixture()
def summary(tmp_path) -> str:
    write_results(tmp_path / "mvtec", "mvtec", MVTEC)
    write_results(tmp_path / "nested" / "headct", "headct", HEADCT)
    return summarize.main([str(tmp_path)])


def test_industrial_rows_against_the_paper(summary):
    rows = table_rows(summary, "Table 1")
    paper = VIP2.rows["mvtec"].values
    columns = VIP2.tables["industrial"][1]
    assert [row[:2] for row in rows[:3]] == [["MVTec AD", "this run"], ["", "paper"], ["", "difference"]]
    assert row_values(rows[0]) == [90.5, 97.1, None, 91.2, 85.6, 44.5]  # percent, 1 decimal, "–" for null
    assert row_values(rows[1]) == [paper[c] for c in columns]
    expected_difference = [None if MVTEC[c] is None else round(100 * MVTEC[c] - paper[c], 1) for c in columns]
    assert row_values(rows[2]) == expected_difference == [-0.7, 1.1, None, 0.7, -1.5, 1.4]
    # one dataset: the average row repeats it, and the paper average covers the same dataset only
    assert rows[3][:2] == ["**average**", "this run"] and row_values(rows[3]) == row_values(rows[0])
    assert row_values(rows[4]) == [91.2, 96.0, None, 90.5, 87.1, 43.1]
    assert len(rows) == 6


def test_medical_image_level_table(summary):
    rows = table_rows(summary, "medical datasets, image level")
    assert rows[0][:2] == ["HeadCT", "this run"]
    assert row_values(rows[0]) == [94.7, 90.1, 88.1]
    assert row_values(rows[1]) == list(VIP2.rows["headct"].values.values())
    assert row_values(rows[2]) == [0.4, -3.8, 0.0]
    assert "pixel level" not in summary and "not in the paper" not in summary


def test_summary_file_and_out_option(tmp_path, summary):
    assert (tmp_path / summarize.SUMMARY_FILE).read_text() == summary
    other = tmp_path / "elsewhere" / "table.md"
    assert summarize.main([str(tmp_path), "--out", str(other)]) == other.read_text()
    assert not list(tmp_path.rglob(".*.tmp"))


def test_average_over_several_datasets(tmp_path):
    write_results(tmp_path / "a", "mvtec", MVTEC)
    write_results(tmp_path / "b", "VisA", {**MVTEC, "image_auroc": 0.8051, "image_f1": 0.80})
    rows = table_rows(summarize.main([str(tmp_path)]), "Table 1")
    assert [row[0] for row in rows[::3]] == ["MVTec AD", "VisA", "**average**"]  # the paper's row order
    average, paper_average, difference = map(row_values, rows[6:9])
    assert average[0] == 85.5 and paper_average[0] == round((91.2 + 88.5) / 2, 1) and difference[0] == -4.3
    assert average[2] == 80.0 and paper_average[2] == 84.8  # F1: only VisA has a value, so only VisA's paper value


def test_unknown_datasets_exact_pro_and_bad_files(tmp_path, capsys):
    write_results(tmp_path / "s", "synthetic", {**MVTEC, "pixel_aupro": -0.0}, pro_mode="exact")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{")
    summary = summarize.main([str(tmp_path)])
    rows = table_rows(summary, "not in the paper")
    assert rows == [["synthetic (exact PRO)", "this run", "90.5", "97.1", "–", "91.2", "0.0", "44.5"]]
    assert "broken" in capsys.readouterr().err


def test_labels_find_their_paper_rows_and_rows_fit_their_tables():
    assert summarize.paper_key("mvtec") == summarize.paper_key("MVTec AD") == "mvtec"
    assert summarize.paper_key("DTD-Synthetic") == "dtd" and summarize.paper_key("CVC-ClinicDB") == "clinicdb"
    assert summarize.paper_key("synthetic") is None
    # every paper row belongs to a table and gives the values that table shows
    for paper in (VIP2, VCP):
        for key, row in paper.rows.items():
            assert set(paper.tables[row.table][1]) == set(row.values), key


def test_every_dataset_name_is_a_registry_name():
    """One list of dataset names: the papers' rows and protocols use generate_dataset_json's registry names."""
    from generate_dataset_json import DATASETS

    for method in method_names():
        paper = get_method(method).paper_tables()
        trained_on = set(paper.evaluation.values()) - {NO_TRAINING}  # a training-free method's protocol has none
        training_sets = trained_on | {t for t, _ in paper.training}  # a set may join several datasets
        names = set(paper.rows) | set(paper.evaluation) | {n for t in training_sets for n in training_datasets(t)}
        assert names <= set(DATASETS), (method, names - set(DATASETS))
        assert trained_on <= {t for t, _ in paper.training}, method
        assert (NO_TRAINING in paper.evaluation.values()) == (not get_method(method).trains), method


def test_vcp_table_and_a_mean_that_left_a_class_out(tmp_path):
    mean = {"pixel_auroc": 0.93, "pixel_aupro": 0.88, "pixel_ap": 0.50, "image_auroc": 0.91, "image_ap": 0.95}
    path = tmp_path / "vcp" / "mvtec" / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"method": "vcp", "dataset": "mvtec", "metrics": {
        "bottle": mean, "screw": {**mean, "image_auroc": None}, "mean": mean}}))
    write_results(tmp_path / "vip2" / "mvtec", "mvtec", MVTEC)
    summary = summarize.main([str(tmp_path)])
    assert "## ViP²-CLIP results" in summary and "## VCP-CLIP results" in summary
    rows = table_rows(summary, "pixel and image level")
    assert rows[0][:2] == ["MVTec AD", "this run"]
    assert rows[0][2:] == ["93.0", "88.0", "50.0", "91.0*", "95.0"]
    assert row_values(rows[1]) == [92.0, 87.3, 49.4, 92.1, 96.9]
    assert "MVTec AD, image AUROC: the mean leaves out screw" in summary
    only = summarize.main([str(tmp_path), "--model", "vcp", "--out", str(tmp_path / "vcp.md")])
    assert "ViP²-CLIP" not in only


def test_no_results_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="no results.json"):
        summarize.main([str(tmp_path)])


def test_download_folder_names_match_the_paper_and_unknown_labels_are_reported(tmp_path, capsys):
    assert summarize.paper_key("BTech_Dataset_transformed") == "btad"
    assert summarize.paper_key("brain_tumor_dataset") == "brainmri"
    messages = []
    folder = tmp_path / "my_parts"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({"dataset": "my_parts", "metrics": {"mean": {"image_auroc": 0.5}}}))
    summarize.gather(tmp_path, warn=messages.append)
    assert any("'my_parts' is not one of the ViP²-CLIP paper's datasets" in m for m in messages)


def test_a_training_free_method_against_its_paper(tmp_path):
    """WinCLIP's own table: its paper's rows beside the run, the run's source said to need no checkpoint."""
    path = write_results(tmp_path / "winclip" / "visa", "visa", MVTEC)
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "method": "winclip", "checkpoint": ""}))
    summary = summarize.main([str(tmp_path / "winclip"), "--model", "winclip"])
    paper = get_method("winclip").paper_tables()
    heading = paper.tables["zero_shot"][0]
    rows = table_rows(summary, heading)
    assert rows[0][:2] == ["VisA", "this run"] and rows[1][1] == "paper"
    columns = paper.tables["zero_shot"][1]
    assert row_values(rows[1]) == [paper.rows["visa"].values[c] for c in columns]
    assert row_values(rows[0])[columns.index("pixel_auroc")] == pytest.approx(MVTEC["pixel_auroc"] * 100, abs=0.05)
    assert "no checkpoint (training-free)" in summary
