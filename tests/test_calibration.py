"""calibrate.py and deploy/calibration.py: the threshold rules against brute force, the refusal for too few images,
the decision carried through a checkpoint and an exported file, predict.py's decisions and masks, the demo's start."""
from __future__ import annotations

import csv
import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURE, FIXTURE_SETTINGS, VCP_FIXTURE, run_script, project_logging_kept
from PIL import Image
from test_predict import write_image

import calibrate
from deploy import calibration as cal
from deploy.image_io import read_image_array
from deploy.runners import load_torch_runner, open_exported

FOLDERS = {"vip2": FIXTURE, "vcp": VCP_FIXTURE}
SETTINGS = {"image_size": 126, "features_list": (1, 2, 3, 4)}


def model_args(method: str, checkpoint=None) -> list[str]:
    folder = FOLDERS[method]
    return ["--model", method, "--checkpoint_path", str(checkpoint or folder / "trained.pth"), "--clip_weights",
            str(folder / "clip_tiny.npz"), *FIXTURE_SETTINGS, "--device", "cpu"]


# ---------------------------------------------------------------- the rules, without a model

def test_false_alarm_threshold_is_the_order_statistic_and_keeps_the_rate():
    rng = np.random.default_rng(0)
    for count, rate in ((200, 0.05), (1000, 0.01), (137, 0.1), (100, 0.29)):
        scores = rng.normal(size=count).astype(np.float32)
        result = cal.false_alarm_threshold(scores, rate)
        alarms = math.floor(round(rate * count, 9))
        ordered = np.sort(scores)
        assert result["allowed_alarms"] == alarms
        assert result["threshold"] == ordered[count - alarms - 1]  # the (n - m)-th order statistic, 1-based
        assert result["threshold"] == np.quantile(scores, (count - alarms) / count, method="inverted_cdf")
        flagged = int((scores > result["threshold"]).sum())
        assert flagged == result["flagged"] <= rate * count + 1e-9
        # the lowest threshold that keeps the rate: the next lower observed value would flag too many
        lower = ordered[ordered < result["threshold"]].max()
        assert (scores > lower).sum() > rate * count


def test_ties_never_push_the_rate_over():
    scores = np.array([0.1] * 15 + [0.5] * 10, dtype=np.float32)  # m = floor(0.4 * 25) = 10, ties at the cut
    result = cal.false_alarm_threshold(scores, 0.4, min_exceedances=5)
    assert result["measured_false_alarm"] <= 0.4
    assert (scores > result["threshold"]).sum() == result["flagged"]


def test_too_few_normal_images_are_refused_with_the_count_needed():
    scores = np.linspace(0, 1, 50)
    with pytest.raises(cal.CalibrationError, match=r"--max_false_alarm 0\.01 needs at least 1000 normal images.*"
                                                   r"got 50.*rate of at least 0\.2"):
        cal.false_alarm_threshold(scores, 0.01)
    with pytest.raises(cal.CalibrationError, match="at least 500 normal images"):
        cal.false_alarm_threshold(scores, 0.01, min_exceedances=5)
    assert cal.required_count(0.03, 10) == 334 and cal.required_count(0.01, 10) == 1000
    cal.false_alarm_threshold(np.linspace(0, 1, 1000), 0.01)  # exactly ceil(k / rate): accepted
    with pytest.raises(cal.CalibrationError, match="at least 1000"):
        cal.false_alarm_threshold(np.linspace(0, 1, 999), 0.01)


def brute_force_f1(values, labels) -> tuple[float, float]:
    """Best F1 of `values > t` over every observed value and one below them all; the highest t among ties."""
    values, labels = np.asarray(values, np.float32).ravel(), np.asarray(labels, bool).ravel()
    candidates = np.r_[np.unique(values), np.nextafter(values.min(), np.float32(-np.inf))]
    best = (-1.0, None)
    for t in sorted(candidates, reverse=True):
        flagged = values > t
        tp = int((flagged & labels).sum())
        f1 = 2 * tp / (labels.sum() + flagged.sum())
        if f1 > best[0] + 1e-12:
            best = (f1, float(t))
    return best


def test_f1_max_equals_brute_force():
    rng = np.random.default_rng(3)
    for trial in range(20):
        count = int(rng.integers(5, 60))
        labels = rng.random(count) < 0.4
        labels[:2] = [True, False]
        values = np.round(rng.normal(size=count) + labels * rng.random(), 1 if trial % 2 else 4)  # ties every other
        result = cal.f1_max_threshold(values, labels)
        f1, threshold = brute_force_f1(values, labels)
        assert result["f1"] == pytest.approx(f1, abs=1e-12) and result["threshold"] == threshold
        flagged = values.astype(np.float32) > result["threshold"]
        assert result["true_positives"] == int((flagged & labels).sum())
        assert result["false_positives"] == int((flagged & ~labels).sum())


def test_f1_max_needs_both_classes():
    with pytest.raises(cal.CalibrationError, match="both normal and anomalous"):
        cal.f1_max_threshold([0.1, 0.2], [False, False])


def test_pixel_rule_streamed_equals_the_pooled_order_statistic():
    rng = np.random.default_rng(5)
    maps = rng.random((12, 9, 9), dtype=np.float32) ** 3
    pixel = cal.PixelFalseAlarm(0.02, images=12, pixels_per_image=81)
    for batch in (maps[:5], maps[5:6], maps[6:]):
        pixel.add(batch)
    result = pixel.result()
    pooled = np.sort(maps.ravel())
    alarms = math.floor(0.02 * pooled.size)
    assert result["threshold"] == pooled[pooled.size - alarms - 1]
    assert result["flagged_pixels"] == int((maps > result["threshold"]).sum()) <= alarms
    assert result["images_with_flagged_pixels"] == int((maps.max(axis=(1, 2)) > result["threshold"]).sum())
    with pytest.raises(cal.CalibrationError, match="at least 10 normal images"):
        cal.PixelFalseAlarm(0.5, images=3, pixels_per_image=10_000)


def test_fingerprint_covers_names_and_contents_not_order(tmp_path):
    files = [tmp_path / "a.png", tmp_path / "sub" / "b.png"]
    for index, path in enumerate(files):
        write_image(path, index)
    first = cal.set_fingerprint(files, tmp_path)
    lines = sorted(f"{p.relative_to(tmp_path).as_posix()}\t{hashlib.sha256(p.read_bytes()).hexdigest()}\n"
                   for p in files)
    assert first == hashlib.sha256("".join(lines).encode()).hexdigest()
    assert cal.set_fingerprint(files[::-1], tmp_path) == first
    files[0].rename(tmp_path / "c.png")
    assert cal.set_fingerprint([tmp_path / "c.png", files[1]], tmp_path) != first
    write_image(files[1], 7)
    assert cal.set_fingerprint([tmp_path / "c.png", files[1]], tmp_path) not in (first,)


def test_decisions_are_strictly_above_the_threshold():
    record = {"format": cal.CALIBRATION_FORMAT, "image_threshold": 0.5, "pixel_threshold": 0.25}
    defects, masks = cal.decide(record, np.array([0.5, 0.51], np.float32), np.array([[[0.25, 0.3]]] * 2, np.float32))
    assert defects.tolist() == [False, True] and masks[0].tolist() == [[False, True]]
    fields, mask = cal.image_decision(None, 0.9)
    assert fields["decision"] == "" and mask is None
    with pytest.raises(cal.CalibrationError, match="calibrate it again"):
        cal.check_record({"format": "something else"})


# ---------------------------------------------------------------- calibrate.py on the fixture models

@pytest.fixture(scope="module")
def normal_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("normal")
    for index in range(20):
        write_image(root / ("sub" if index % 3 else "") / f"{index:03d}.png", 100 + index, size=(90 + index, 84))
    return root


def raw_outputs(runner, paths) -> tuple[np.ndarray, np.ndarray]:
    maps, scores = runner(np.stack([read_image_array(p, runner.image_size)[0] for p in paths]))
    return maps, scores


@pytest.fixture(scope="module")
def vip2_calibrated(normal_dir, tmp_path_factory) -> dict:
    output = tmp_path_factory.mktemp("calibrated") / "calibrated.pth"
    with project_logging_kept():  # a module-scoped run must not leave the project's logging changed
        record = calibrate.main([*model_args("vip2"), "--normal_dir", str(normal_dir), "--max_false_alarm", "0.5",
                                 "--max_pixel_false_alarm", "0.01", "--output", str(output)])
    return {"record": record, "output": output}


def test_false_alarm_calibration_of_a_checkpoint(vip2_calibrated, normal_dir):
    record = vip2_calibrated["record"]
    runner = load_torch_runner("vip2", checkpoint=FIXTURE / "trained.pth", clip_weights=str(FIXTURE / "clip_tiny.npz"),
                               device="cpu", **SETTINGS)
    paths = cal.list_images(normal_dir)
    maps, scores = raw_outputs(runner, paths)
    assert record["rule"] == "false_alarm" and record["calibration_set"]["normal_images"] == 20
    assert record["calibration_set"]["sha256"] == cal.set_fingerprint(paths, normal_dir)
    expected = np.sort(scores)[20 - 10 - 1]  # m = floor(0.5 * 20) = 10
    assert record["image_threshold"] == pytest.approx(float(expected), abs=1e-6)
    assert (scores > record["image_threshold"] + 1e-6).sum() <= 10
    pixels = np.sort(maps.ravel())
    assert record["pixel_threshold"] == pytest.approx(float(pixels[pixels.size - int(0.01 * pixels.size) - 1]),
                                                      abs=1e-6)


def test_the_trained_checkpoint_is_left_alone_and_the_new_one_carries_the_record(vip2_calibrated):
    saved = torch.load(vip2_calibrated["output"], map_location="cpu", weights_only=True)
    original = torch.load(FIXTURE / "trained.pth", map_location="cpu", weights_only=True)
    assert "calibration" not in original and saved["calibration"] == vip2_calibrated["record"]
    for key, value in original.items():  # every trained tensor, unchanged
        pairs = [(saved[key][k], v) for k, v in value.items()] if isinstance(value, dict) else [(saved[key], value)]
        assert all(torch.equal(a, b) for a, b in pairs)
    with pytest.raises(ValueError, match="is the input model"):
        calibrate.main([*model_args("vip2", checkpoint=vip2_calibrated["output"]), "--normal_dir", "unused",
                        "--max_false_alarm", "0.5", "--output", str(vip2_calibrated["output"]), "--overwrite"])


def test_too_few_images_are_refused_before_the_model_loads(normal_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(calibrate, "make_runner", lambda args: pytest.fail("the model was loaded"))
    output = tmp_path / "out.pth"
    with pytest.raises(cal.CalibrationError, match=r"needs at least 1000 normal images.*got 20"):
        calibrate.main([*model_args("vip2"), "--normal_dir", str(normal_dir), "--max_false_alarm", "0.01",
                        "--output", str(output)])
    assert not output.exists()


def test_f1_max_on_a_labelled_set_for_vcp_uses_raw_scores(tmp_path):
    record = calibrate.main([*model_args("vcp"), "--data_path", str(VCP_FIXTURE / "data"), "--output",
                             str(tmp_path / "vcp.pth"), "--max_false_alarm", "0.34", "--min_exceedances", "1"])
    from dataset import AnomalyDataset

    dataset = AnomalyDataset(VCP_FIXTURE / "data", 126)
    runner = load_torch_runner("vcp", checkpoint=VCP_FIXTURE / "trained.pth",
                               clip_weights=str(VCP_FIXTURE / "clip_tiny.npz"), device="cpu", **SETTINGS)
    items = [dataset[i] for i in range(len(dataset))]
    maps, scores = runner(np.stack([item["img"].numpy() for item in items]))  # raw: no set normalisation
    labels = np.array([item["anomaly"] for item in items], bool)
    masks = np.stack([item["img_mask"].numpy() > 0 for item in items])
    assert record["rule"] == "false_alarm"  # a rate was given: it decides; F1-max is measured beside it
    f1, threshold = brute_force_f1(scores, labels)
    assert record["measured"]["f1_max_image"]["f1"] == pytest.approx(f1, abs=1e-9)
    assert record["measured"]["f1_max_image"]["threshold"] == pytest.approx(threshold, abs=1e-6)
    pixel = cal.f1_max_threshold(maps, masks)
    assert record["measured"]["f1_max_pixel"]["threshold"] == pytest.approx(pixel["threshold"], abs=1e-6)
    normal = np.sort(scores[~labels])  # 3 normal images, m = floor(0.34 * 3) = 1: the second highest
    assert record["image_threshold"] == pytest.approx(float(normal[1]), abs=1e-6)
    assert record["calibration_set"]["anomalous_images"] == int(labels.sum())


# ---------------------------------------------------------------- carried with the model

def test_round_trip_through_the_checkpoint_and_an_exported_file(vip2_calibrated, normal_dir, tmp_path):
    pytest.importorskip("onnxruntime", reason="exported files run on onnxruntime (pip install -r requirements.txt)")
    import export

    record = vip2_calibrated["record"]
    runner = load_torch_runner("vip2", checkpoint=vip2_calibrated["output"],
                               clip_weights=str(FIXTURE / "clip_tiny.npz"), device="cpu", **SETTINGS)
    assert runner.info.calibration == record
    report = export.main([*model_args("vip2", checkpoint=vip2_calibrated["output"])[:-2],
                          "--output", str(tmp_path / "calibrated.onnx")])
    exported = open_exported(report["output"])
    assert exported.info.calibration == record
    # calibrating an exported file writes a new file; the source keeps what it had
    plain = export.main([*model_args("vip2")[:-2], "--output", str(tmp_path / "plain.onnx")])["output"]
    before = hashlib.sha256(Path(plain).read_bytes()).hexdigest()
    again = calibrate.main(["--onnx", plain, "--normal_dir", str(normal_dir), "--max_false_alarm", "0.5",
                            "--output", str(tmp_path / "plain_calibrated.onnx")])
    assert hashlib.sha256(Path(plain).read_bytes()).hexdigest() == before and not open_exported(plain).info.calibration
    assert open_exported(tmp_path / "plain_calibrated.onnx").info.calibration == again
    assert again["image_threshold"] == pytest.approx(record["image_threshold"], abs=1e-5)  # same model, same images


# ---------------------------------------------------------------- predict.py and the demo

def read_rows(out_dir: Path) -> list[dict]:
    with open(out_dir / "scores.csv", newline="") as file:
        return list(csv.DictReader(file))


@pytest.mark.parametrize("method", ["vip2", "vcp"])
def test_predict_writes_decisions_and_masks(method, tmp_path, normal_dir):
    import predict

    checkpoint = tmp_path / f"{method}.pth"
    calibrate.main([*model_args(method), "--normal_dir", str(normal_dir), "--max_false_alarm", "0.5",
                    "--max_pixel_false_alarm", "0.02", "--output", str(checkpoint)])
    record = torch.load(checkpoint, weights_only=True)["calibration"]
    images = tmp_path / "images"
    for index in range(4):
        write_image(images / f"{index}.png", 300 + index)
    out = tmp_path / "out"
    assert predict.main([str(images), "--out", str(out), "--save_raw", *model_args(method, checkpoint)]) == 4
    rows = read_rows(out)
    runner = load_torch_runner(method, checkpoint=checkpoint, clip_weights=str(FOLDERS[method] / "clip_tiny.npz"),
                               device="cpu", **SETTINGS)
    maps, scores = raw_outputs(runner, [Path(r["path"]) for r in rows])
    for row, raw_map, raw_score in zip(rows, maps, scores):
        assert float(row["raw_score"]) == pytest.approx(float(raw_score), abs=1e-5)
        expected = "defect" if raw_score > record["image_threshold"] else "pass"
        if abs(raw_score - record["image_threshold"]) > 1e-5:  # away from the edge, float noise cannot flip it
            assert row["decision"] == expected
        assert float(row["threshold"]) == pytest.approx(record["image_threshold"], rel=1e-5)
        mask = np.asarray(Image.open(out / row["mask"]))
        assert mask.shape == (126, 126) and set(np.unique(mask)) <= {0, 255}
        decided = raw_map > record["pixel_threshold"]
        near = np.abs(raw_map - record["pixel_threshold"]) < 1e-5
        assert ((mask == 255) == decided)[~near].all()  # on the raw map, also for VCP-CLIP's normalised run
    flagged = sum(r["decision"] == "defect" for r in rows)
    assert f"{flagged} of 4 image(s) flagged as defect" in (out / "log.txt").read_text()


def test_predict_without_calibration_leaves_the_decision_empty(tmp_path):
    import predict

    write_image(tmp_path / "images" / "a.png", 1)
    predict.main([str(tmp_path / "images"), "--out", str(tmp_path / "out"), *model_args("vip2")])
    row = read_rows(tmp_path / "out")[0]
    assert row["decision"] == row["mask"] == "" and not list((tmp_path / "out").glob("*_mask.png"))
    assert "carries no calibration" in (tmp_path / "out" / "log.txt").read_text()


def test_the_demo_starts_at_the_calibrated_threshold(vip2_calibrated, tmp_path):
    pytest.importorskip("gradio", reason="the demo page needs gradio (pip install -r requirements-deploy.txt)")
    import demo

    spec = demo.ModelSpec(method="vip2", checkpoint=str(vip2_calibrated["output"]),
                          clip_weights=str(FIXTURE / "clip_tiny.npz"), settings=" ".join(FIXTURE_SETTINGS),
                          device="cpu")
    runner = demo.load_runner(spec)
    assert demo.initial_threshold(runner) == vip2_calibrated["record"]["pixel_threshold"]
    plain = demo.load_runner(demo.ModelSpec(method="vip2", checkpoint=str(FIXTURE / "trained.pth"),
                                            clip_weights=str(FIXTURE / "clip_tiny.npz"),
                                            settings=" ".join(FIXTURE_SETTINGS), device="cpu"))
    assert demo.initial_threshold(plain) == demo.DEFAULT_THRESHOLD
    runner = demo.load_runner(spec)
    write_image(tmp_path / "a.png", 1)
    results, _ = demo.analyse(runner, demo.image_paths([tmp_path / "a.png"]))
    assert results[0].decision == ("defect" if results[0].raw_score > vip2_calibrated["record"]["image_threshold"]
                                   else "pass")
    assert results[0].decision in demo.score_text(results[0], False)


@pytest.mark.slow
def test_calibrate_cli_refuses_in_one_line_and_writes_nothing(normal_dir, tmp_path):
    result = run_script("calibrate.py", *model_args("vip2"), "--normal_dir", normal_dir, "--max_false_alarm", "0.01",
                        "--output", tmp_path / "out.pth", check=False)
    assert result.returncode != 0 and not (tmp_path / "out.pth").exists()
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("calibrate.py: --max_false_alarm 0.01 needs at least 1000 normal images")


@pytest.mark.slow
def test_calibrate_cli_end_to_end_then_predict(normal_dir, tmp_path):
    run_script("calibrate.py", *model_args("vip2"), "--normal_dir", normal_dir, "--max_false_alarm", "0.5",
               "--max_pixel_false_alarm", "0.01", "--output", tmp_path / "c.pth", "--report", tmp_path / "c.json")
    result = run_script("predict.py", normal_dir, "--out", tmp_path / "out", *model_args("vip2", tmp_path / "c.pth"))
    rows = read_rows(tmp_path / "out")
    flagged = sum(r["decision"] == "defect" for r in rows)
    assert len(rows) == 20 and flagged <= 10  # the calibration set itself: at most m = 10 of 20 flagged
    assert f"{flagged} of 20 image(s) flagged" in result.stdout + result.stderr


def test_the_demo_maps_vcp_s_raw_threshold_onto_each_set_s_scale(normal_dir, tmp_path):
    pytest.importorskip("gradio", reason="the demo page needs gradio (pip install -r requirements-deploy.txt)")
    import demo

    checkpoint = tmp_path / "vcp.pth"
    record = calibrate.main([*model_args("vcp"), "--normal_dir", str(normal_dir), "--max_false_alarm", "0.5",
                             "--max_pixel_false_alarm", "0.02", "--output", str(checkpoint)])
    runner = demo.load_runner(demo.ModelSpec(method="vcp", checkpoint=str(checkpoint),
                                             clip_weights=str(VCP_FIXTURE / "clip_tiny.npz"),
                                             settings=" ".join(FIXTURE_SETTINGS), device="cpu"))
    assert demo.initial_threshold(runner) == demo.DEFAULT_THRESHOLD  # no maps yet: no scale to map onto
    paths = cal.list_images(normal_dir)[:3]
    results, _ = demo.analyse(runner, demo.image_paths(paths))
    raw_maps, raw_scores = raw_outputs(runner, paths)
    low, high = float(raw_maps.min()), float(raw_maps.max())
    assert results[0].pixel_threshold_shown == pytest.approx((record["pixel_threshold"] - low) / (high - low),
                                                             abs=1e-5)
    for result, raw in zip(results, raw_scores):  # decided on the raw score, not the normalised one shown
        if abs(raw - record["image_threshold"]) > 1e-5:
            assert result.decision == ("defect" if raw > record["image_threshold"] else "pass")
