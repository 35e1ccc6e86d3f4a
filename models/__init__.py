"""shadowcam training side: synthetic warehouse data, datasets, training, ONNX export (torch, albumentations)."""
