"""Contrastive pretraining of a small CLIP on image-caption pairs from packaged image sets.

`cli.main` is the entry point (`metatpt-pretrain`); `train.run(config)` does the work.
"""
