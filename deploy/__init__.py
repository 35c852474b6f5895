"""The deploy side: one runner interface over PyTorch, ONNX Runtime and OpenVINO (`runners`) and torch-free image
reading (`image_io`), so an exported file runs without PyTorch or `models`."""
