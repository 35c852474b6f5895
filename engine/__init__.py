"""What runs a model: devices and precision (`devices`), batched inference (`inference`), the training loop
(`training`), the frozen-feature cache (`feature_cache`), torchrun (`distributed`), training augmentation
(`augment`) and several training datasets in one run (`training_data`). Imported by the scripts; imports nothing of them."""
