"""What runs a model: devices and precision (`devices`), batched inference (`inference`), the training loop
(`training`), the frozen-feature cache (`feature_cache`), torchrun (`distributed`) and training augmentation
(`augment`). Imported by the scripts; imports nothing of them."""
