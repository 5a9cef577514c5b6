"""The presets differ from each other only where their comments say so."""
from dataclasses import asdict

from dino_tutorial.config import TrainConfig


def test_imagenette_preset_is_the_small_recipe_with_the_fast_path_and_its_own_length():
    small, reference = asdict(TrainConfig.from_preset("small")), asdict(TrainConfig.from_preset("imagenette"))
    changed = {name for name in small if small[name] != reference[name]}
    assert changed == {"augmentation", "epochs", "knn_every", "knn_student"}
    assert (reference["augmentation"], reference["epochs"], reference["knn_student"]) == ("fast", 24, True)


def test_momentum_teacher_end_defaults_to_the_authors_one():
    assert TrainConfig().momentum_teacher_end == 1.0
