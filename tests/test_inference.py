"""test.py's inference loop (engine/inference.py): how work is split between loader processes changes no output."""
from __future__ import annotations

import pytest
import torch
from conftest import fixture_model

from engine import inference as test_script
from dataset import AnomalyDataset
from generate_dataset_json.synthetic import make_synthetic_dataset


@pytest.mark.parametrize(("batch_size", "workers", "chunk"),
                         [(32, 16, 2), (32, 12, 2), (8, 3, 2), (7, 2, 1), (8, 0, 8), (8, 1, 8), (4, 64, 1)])
def test_loader_chunk_divides_the_batch_and_spreads_it_over_workers(batch_size, workers, chunk):
    assert test_script.loader_chunk(batch_size, workers) == chunk


@pytest.mark.parametrize(("chunk", "batch_size", "sizes"), [(2, 4, [4, 4, 2]), (3, 4, [4, 4, 2]), (5, 2, [2] * 5),
                                                             (1, 16, [10])])
def test_device_batches_rejoin_chunks_in_order(chunk, batch_size, sizes):
    chunks = [{"img": torch.arange(i, min(i + chunk, 10))[:, None].float(),
               "img_mask": torch.zeros(min(chunk, 10 - i), 1, dtype=torch.uint8),
               "anomaly": torch.arange(i, min(i + chunk, 10))} for i in range(0, 10, chunk)]
    batches = list(test_script.device_batches(chunks, batch_size, torch.device("cpu")))
    assert [len(b["img"]) for b in batches] == sizes
    assert torch.cat([b["anomaly"] for b in batches]).tolist() == list(range(10))
    assert torch.cat([b["img"][:, 0] for b in batches]).tolist() == list(range(10))


@pytest.mark.slow
def test_predict_with_loader_processes_matches_single_process(tiny_clip, tmp_path):
    make_synthetic_dataset(tmp_path, classes=("a_synth", "b_synth"), n_normal=3, n_anomalous=2,
                           image_size=(80, 72), seed=3)
    dataset = AnomalyDataset(tmp_path, 126, split="test")  # as test.py reads it
    model = fixture_model(tiny_clip, sigma=4.0)
    single = test_script.predict_dataset(model, dataset, torch.device("cpu"), batch_size=4, workers=0,
                                         precision="fp32")
    chunked = test_script.predict_dataset(model, dataset, torch.device("cpu"), batch_size=4, workers=2,
                                          precision="fp32")
    for key in ("gt_masks", "labels"):
        torch.testing.assert_close(chunked[key], single[key], rtol=0, atol=0)
    for key in ("anomaly_maps", "image_scores"):
        torch.testing.assert_close(chunked[key], single[key], rtol=0, atol=1e-6)
    assert single["labels"].tolist() == [int(s.anomaly) for s in dataset.samples]
    with torch.no_grad():
        maps, scores = model(torch.stack([dataset[i]["img"] for i in range(len(dataset))]))
    torch.testing.assert_close(single["anomaly_maps"], maps, rtol=0, atol=1e-6)
    torch.testing.assert_close(single["image_scores"], scores, rtol=0, atol=1e-6)


def test_normalisation_equals_torchvision_to_tensor_and_normalize(tmp_path):
    """The model's uint8 input path gives torchvision's ToTensor + Normalize values, exactly."""
    from torchvision import transforms

    from models.base import CLIP_MEAN, CLIP_STD, normalize_images

    make_synthetic_dataset(tmp_path, classes=("a_synth",), n_normal=1, n_anomalous=1, image_size=(50, 40), seed=1)
    dataset = AnomalyDataset(tmp_path, 64)
    images = torch.stack([dataset[0]["img"], dataset[1]["img"]])
    assert images.dtype == torch.uint8
    reference = transforms.Compose([transforms.ToTensor(), transforms.Normalize(CLIP_MEAN, CLIP_STD)])
    expected = torch.stack([reference(image.permute(1, 2, 0).numpy()) for image in images])
    torch.testing.assert_close(normalize_images(images), expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="expects uint8 RGB images"):
        normalize_images(images.float())
