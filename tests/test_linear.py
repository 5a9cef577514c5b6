"""Linear evaluation on frozen features (paper Sec. 4.1), checked against optima and classifiers derived by hand."""
import math

import numpy as np
import pytest
import torch

from dino_tutorial.linear import linear_evaluate, train_linear_classifier


def separable(n, dim, classes, rng, teacher, margin=2.0):
    """Points labelled by argmax(teacher @ x), keeping only those whose best class wins by `margin`."""
    x = rng.normal(size=(4 * n, dim))
    scores = x @ teacher.T
    top2 = np.sort(scores, axis=1)[:, -2:]
    keep = (top2[:, 1] - top2[:, 0]) > margin
    return torch.tensor(x[keep][:n], dtype=torch.float32), torch.tensor(scores[keep][:n].argmax(1))


def gaussian_clusters(n, centers, noise, rng):
    labels = rng.integers(0, len(centers), n)
    x = centers[labels] + noise * rng.normal(size=(n, centers.shape[1]))
    return torch.tensor(x, dtype=torch.float32), torch.tensor(labels)


def test_linearly_separable_data_is_classified_perfectly():
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(4, 16))
    train = separable(600, 16, 4, rng, teacher)
    test = separable(300, 16, 4, rng, teacher)
    assert linear_evaluate(*train, *train)[0] == 100.0
    top1, top5 = linear_evaluate(*train, *test)
    assert top1 >= 99.0 and top5 == 100.0                  # 4 classes: top-5 is top-4, always a hit


def test_clustered_data_is_classified_almost_as_well_as_by_the_bayes_rule():
    """Isotropic Gaussian clusters with equal priors: the best possible classifier is the nearest true centre."""
    rng = np.random.default_rng(1)
    centers = 3 * rng.normal(size=(10, 32))
    train_x, train_y = gaussian_clusters(2000, centers, 7.0, rng)      # clusters overlap: Bayes rule ~70%
    test_x, test_y = gaussian_clusters(1000, centers, 7.0, rng)
    distances = ((test_x.numpy()[:, None, :] - centers[None]) ** 2).sum(-1)
    bayes = 100.0 * (distances.argmin(1) == test_y.numpy()).mean()
    top1, _ = linear_evaluate(train_x, train_y, test_x, test_y)
    assert top1 > 10.0 + 50.0                               # chance is 10%
    assert top1 >= bayes - 4.0, f"linear {top1:.1f}% vs Bayes rule {bayes:.1f}%"


def test_two_point_problem_reaches_its_closed_form_optimum():
    """Raw features 2 (class 0) and 8 (class 1) standardise to -1 and +1. With L2 penalty lam/2 * ||params||^2
    (SGD weight decay lam) the optimum is W = [-a, a], b = 0 in standardised space, where a minimises
    log(1 + exp(-2a)) + lam * a^2, i.e. solves lam * a = sigmoid(-2a). Back in raw units (mean 5, std 3):
    W_raw = W / 3 and b_raw = -W_raw * 5."""
    lam = 0.5
    low, high = 0.0, 10.0
    for _ in range(60):                                     # bisection on lam * a - sigmoid(-2a), increasing in a
        a = (low + high) / 2
        low, high = (a, high) if lam * a < 1 / (1 + math.exp(2 * a)) else (low, a)
    layer = train_linear_classifier(torch.tensor([[2.0], [8.0]]), torch.tensor([0, 1]), num_classes=2,
                                    epochs=300, lr=0.1, weight_decay=lam)
    torch.testing.assert_close(layer.weight, torch.tensor([[-a / 3], [a / 3]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(layer.bias, torch.tensor([5 * a / 3, -5 * a / 3]), atol=1e-5, rtol=0)


def test_returned_layer_takes_raw_features_whatever_their_scale():
    """Shifting and scaling the features changes nothing: the classifier standardises them internally."""
    rng = np.random.default_rng(2)
    centers = rng.normal(size=(5, 8))
    x, y = gaussian_clusters(400, centers, 1.0, rng)
    test_x, test_y = gaussian_clusters(200, centers, 1.0, rng)
    scale = torch.linspace(0.01, 100.0, 8)
    a = linear_evaluate(x, y, test_x, test_y, epochs=20)
    b = linear_evaluate(x * scale + 7.0, y, test_x * scale + 7.0, test_y, epochs=20)
    assert a == pytest.approx(b, abs=0.5)
    layer = train_linear_classifier(x * scale + 7.0, y, 5, epochs=20)
    by_hand = 100.0 * (layer(test_x * scale + 7.0).argmax(1) == test_y).float().mean().item()
    assert b[0] == pytest.approx(by_hand)


def test_the_caller_s_features_are_left_unchanged():
    x, y = torch.randn(40, 3) * 5 + 2, torch.randint(0, 2, (40,))
    before = x.clone()
    train_linear_classifier(x, y, 2, epochs=2)
    assert torch.equal(x, before)


def test_constant_feature_dimensions_do_not_break_training():
    x = torch.randn(50, 6)
    x[:, 2] = 0.0                                           # a channel that no image activates
    y = (x[:, 0] > 0).long()
    layer = train_linear_classifier(x, y, 2, epochs=10)
    assert torch.isfinite(layer.weight).all() and torch.isfinite(layer.bias).all()


def test_same_seed_same_classifier_and_global_rng_untouched():
    x, y = torch.randn(100, 5), torch.randint(0, 3, (100,))
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = train_linear_classifier(x, y, 3, epochs=5, batch_size=16, seed=7)
    after = torch.rand(1)
    second = train_linear_classifier(x, y, 3, epochs=5, batch_size=16, seed=7)
    assert torch.equal(before, after)
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)


F, L = torch.randn(10, 4), torch.zeros(10, dtype=torch.long)


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 0}, "epochs must be >= 1, got 0"),
    ({"lr": 0.0}, "lr must be > 0, got 0.0"),
    ({"lr": -0.1}, "lr must be > 0, got -0.1"),
    ({"weight_decay": -1e-4}, "weight_decay must be >= 0, got -0.0001"),
    ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
])
def test_bad_training_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        train_linear_classifier(F, L, 2, **kwargs)


@pytest.mark.parametrize("args, message", [
    ((F, L[:9], F, L), r"train_labels must hold one label per row of train_features: got labels of shape \(9,\)"),
    ((F, L, F, L[:3]), "test_labels must hold one label per row of test_features"),
    ((F[:, 0], L, F, L), r"train_features must be a 2-D \(N, D\) tensor, got shape \(10,\)"),
    ((F, L, F[:, :3], L), "test_features have D=3 but train_features have D=4"),
    ((F[:0], L[:0], F, L), "train_features is empty"),
    ((F * float("nan"), L, F, L), "train_features contain NaN or infinite values"),
])
def test_mismatched_or_broken_inputs_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        linear_evaluate(*args)


def test_labels_outside_the_classes_are_named():
    with pytest.raises(ValueError, match=r"test_labels must lie in \[0, num_classes=2\), got values from 0 to 5"):
        linear_evaluate(F, L, F, torch.full((10,), 5).index_fill(0, torch.tensor([0]), 0), num_classes=2)


# ---- the protocol's details, each stated as a property (found by mutation testing)

def blobs(n=40, d=6, classes=3, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    features = torch.randn(n, d, generator=generator) + 4 * torch.eye(d)[labels % d]
    return features.to(dtype), labels


def test_the_defaults_are_the_authors_epochs_and_decay_and_the_documented_rest():
    import inspect
    defaults = {k: p.default for k, p in inspect.signature(train_linear_classifier).parameters.items()
                if p.default is not inspect.Parameter.empty}
    assert defaults == {"epochs": 100, "lr": 0.01, "weight_decay": 0.0, "batch_size": 256, "device": "cpu", "seed": 0}


def test_the_learning_rate_follows_the_cosine_to_zero_iteration_by_iteration(monkeypatch):
    from dino_tutorial.schedules import cosine_schedule
    seen = []
    real_step = torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        assert self.param_groups[0]["momentum"] == 0.9
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    features, labels = blobs(n=10)
    train_linear_classifier(features, labels, 3, epochs=3, lr=0.5, batch_size=4)     # 3 iterations per epoch
    np.testing.assert_allclose(seen, cosine_schedule(0.5, 0.0, 3, 3), rtol=1e-12)
    assert len(seen) == 9 and seen[0] == 0.5


@pytest.mark.parametrize("settings", [dict(epochs=1), dict(batch_size=1), dict(num_classes=1)])
def test_the_smallest_allowed_settings_train(settings):
    features, labels = blobs(n=8)
    settings = dict(settings)                            # the parametrised dict is shared between runs
    num_classes = settings.pop("num_classes", 3)
    if num_classes == 1:
        labels = torch.zeros_like(labels)
    layer = train_linear_classifier(features, labels, num_classes, **{"epochs": 2, **settings})
    assert layer.weight.shape == (num_classes, features.shape[1])


def test_a_label_equal_to_num_classes_is_out_of_range():
    features, labels = blobs(n=8)
    with pytest.raises(ValueError, match=r"train_labels must lie in \[0, num_classes=2\), got values from 0 to 2"):
        train_linear_classifier(features, labels, 2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_features_of_any_float_type_train_a_float32_layer(dtype):
    features, labels = blobs(dtype=dtype)
    layer = train_linear_classifier(features, labels, 3, epochs=5)
    assert layer.weight.dtype == torch.float32
    assert (layer(features.float()).argmax(1) == labels).float().mean() > 0.9


def test_the_returned_layer_is_frozen_and_in_eval_mode():
    features, labels = blobs()
    layer = train_linear_classifier(features, labels, 3, epochs=2)
    assert not layer.training and not any(p.requires_grad for p in layer.parameters())


def test_a_call_with_the_defaults_is_the_documented_protocol():
    """Mutated defaults are invisible to inspect.signature under some tools: compare the trained layers."""
    features, labels = blobs(n=30)
    default = train_linear_classifier(features, labels, 3)
    explicit = train_linear_classifier(features, labels, 3, epochs=100, lr=0.01, weight_decay=0.0, batch_size=256,
                                       device="cpu", seed=0)
    assert torch.equal(default.weight, explicit.weight) and torch.equal(default.bias, explicit.bias)
    for changed in (dict(epochs=101), dict(lr=0.02), dict(seed=1)):             # each default matters
        other = train_linear_classifier(features, labels, 3, batch_size=8, **changed)
        assert not torch.equal(other.weight, train_linear_classifier(features, labels, 3, batch_size=8).weight)


@pytest.mark.parametrize("features, labels, message", [
    (torch.randn(4), torch.zeros(4, dtype=torch.long), r"^train_features must be a 2-D \(N, D\) tensor, got shape \(4,\)$"),
    (torch.randn(4, 2), torch.zeros(3, dtype=torch.long),
     r"^train_labels must hold one label per row of train_features: got labels of shape \(3,\) for 4 rows$"),
])
def test_bad_training_inputs_are_named_as_the_training_split(features, labels, message):
    with pytest.raises(ValueError, match=message):
        train_linear_classifier(features, labels, 2)


def test_num_classes_below_one_is_refused_in_one_line():
    features, labels = blobs(n=8)
    with pytest.raises(ValueError, match=r"^num_classes must be >= 1, got 0$"):
        train_linear_classifier(features, torch.zeros_like(labels), 0)


def test_more_test_rows_than_one_chunk_are_all_scored_in_float32():
    """linear_evaluate scores 8,192 rows at a time: 9,000 float64 rows must give the accuracy of the layer
    applied to all of them at once."""
    features, labels = blobs(n=60, d=4, classes=3)
    generator = torch.Generator().manual_seed(3)
    test_labels = torch.arange(9000) % 3
    test = (torch.randn(9000, 4, generator=generator) + 4 * torch.eye(4)[test_labels]).double()
    top1, _ = linear_evaluate(features, labels, test, test_labels, epochs=3)
    layer = train_linear_classifier(features, labels, 3, epochs=3)
    expected = 100.0 * (layer(test.float()).argmax(1) == test_labels).sum().item() / 9000
    assert top1 == pytest.approx(expected, abs=1e-9) and 50 < top1 < 100
