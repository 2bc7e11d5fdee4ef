"""Video data: decoding (torchcodec), annotation lists, sampling, augmentation, synthetic clips."""
