"""DINO (self-distillation with no labels) for ResNet backbones: one module per concept of the paper.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021, arXiv 2104.14294.
Modules, in the order of the course: ``augment`` (multi-crop), ``model`` (backbone, head, multi-crop
wrapper), ``teacher`` (EMA teacher), ``loss`` (the DINO loss), ``schedules``, ``knn`` (evaluation),
``linear`` (linear evaluation), ``optim`` (parameter groups, clipping, LARS), ``config`` (every setting
of a run and the presets), ``train`` (the trainer), ``checkpoint`` and ``data``; the faster multi-crop
paths ``fast_augment`` (uint8 views on the CPU) and ``device_augment`` (batched views on the training device);
``notebook`` holds the chapters' shared setup.
"""
__version__ = "0.1.0"
