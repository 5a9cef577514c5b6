"""The presets differ from each other only where their comments say so."""
import math
from dataclasses import asdict

import pytest

from dino_tutorial.config import TrainConfig


def test_imagenette_preset_is_the_small_recipe_with_the_fast_path_and_its_own_length():
    small, reference = asdict(TrainConfig.from_preset("small")), asdict(TrainConfig.from_preset("imagenette"))
    changed = {name for name in small if small[name] != reference[name]}
    assert changed == {"augmentation", "epochs", "knn_every", "knn_student"}
    assert (reference["augmentation"], reference["epochs"], reference["knn_student"]) == ("fast", 64, True)


def test_momentum_teacher_end_defaults_to_the_authors_one():
    assert TrainConfig().momentum_teacher_end == 1.0


def test_teacher_momentum_follows_a_cosine_from_start_to_end(tiny_folder, tmp_path):
    from dino_tutorial.train import Trainer

    def schedule(out, **overrides):
        config = TrainConfig.from_preset(
            "small", data_path=str(tiny_folder), output_dir=str(out), arch="resnet18_w16", global_size=32,
            local_size=16, local_crops_number=2, batch_size_per_gpu=4, out_dim=64, epochs=2, warmup_epochs=1,
            num_workers=0, knn_every=0, progress=False, momentum_teacher=0.99, **overrides)
        return Trainer(config).momentum_schedule

    cosine, fixed = schedule(tmp_path / "a"), schedule(tmp_path / "b", momentum_teacher_end=0.99)
    n = len(cosine)
    # the authors' schedule: 1 - (1 - 0.99) * (1 + cos(pi * i / n)) / 2, from 0.99 towards 1
    assert cosine[0] == 0.99 and cosine[-1] > 0.99
    assert cosine[n // 2] == pytest.approx(1 - 0.01 * (1 + math.cos(math.pi * (n // 2) / n)) / 2)
    assert (fixed == 0.99).all()
