"""DINO (self-distillation with no labels) for ResNet backbones: one module per concept of the paper.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021, arXiv 2104.14294.
Modules, in the order of the course: ``augment`` (multi-crop), ``model`` (backbone, head, multi-crop
wrapper), ``teacher`` (EMA teacher), ``loss`` (the DINO loss), ``schedules``, ``knn`` (evaluation),
``linear`` (linear evaluation), ``optim`` (parameter groups, clipping, LARS), ``train`` (the trainer),
``checkpoint`` and ``data``.
"""
__version__ = "0.1.0"
