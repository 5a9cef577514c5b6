"""Weighted k-NN (paper Sec. 4.1) against a brute-force implementation written independently."""
import numpy as np
import pytest
import torch

from dino_tutorial.knn import extract_features, knn_classify, knn_hits


def brute_force_knn(train_f, train_l, test_f, test_l, k, T, num_classes):
    """Loop over queries; sort all similarities; weighted votes; top-1 and top-5 in percent."""
    train_f = train_f / np.linalg.norm(train_f, axis=1, keepdims=True)
    test_f = test_f / np.linalg.norm(test_f, axis=1, keepdims=True)
    top1 = top5 = 0
    for q, label in zip(test_f, test_l):
        sims = train_f @ q
        nearest = np.argsort(-sims, kind="stable")[:k]
        votes = np.zeros(num_classes)
        for j in nearest:
            votes[train_l[j]] += np.exp(sims[j] / T)
        ranked = np.argsort(-votes, kind="stable")
        top1 += ranked[0] == label
        top5 += label in ranked[:min(5, num_classes)] and votes[label] > 0
    return 100 * top1 / len(test_l), 100 * top5 / len(test_l)


def clustered(n, classes, dim, rng, centers=None):
    centers = rng.normal(size=(classes, dim)) if centers is None else centers
    labels = rng.integers(0, classes, n)
    return (centers[labels] + 1.5 * rng.normal(size=(n, dim))).astype(np.float32), labels


@pytest.mark.parametrize("n_test, k", [(7, 20), (250, 20), (40, 1), (40, 500)])
def test_knn_equals_brute_force(n_test, k):
    rng = np.random.default_rng(n_test + k)
    centers = rng.normal(size=(12, 16))
    train_f, train_l = clustered(300, 12, 16, rng, centers)
    test_f, test_l = clustered(n_test, 12, 16, rng, centers)
    expected = brute_force_knn(train_f, train_l, test_f, test_l, min(k, 300), 0.07, 12)
    got = knn_classify(torch.tensor(train_f), torch.tensor(train_l), torch.tensor(test_f), torch.tensor(test_l),
                       k=k, T=0.07, num_classes=12)
    assert got == pytest.approx(expected)


def test_knn_works_with_fewer_than_100_test_images_and_tiny_chunks():
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(3, 4))
    train_f, train_l = clustered(50, 3, 4, rng, centers)
    test_f, test_l = clustered(3, 3, 4, rng, centers)
    args = [torch.tensor(x) for x in (train_f, train_l, test_f, test_l)]
    whole = knn_classify(*args, k=5)
    chunked = knn_classify(*args, k=5, max_chunk_elements=1)        # one query at a time
    assert whole == chunked == pytest.approx(brute_force_knn(train_f, train_l, test_f, test_l, 5, 0.07, 3))


def test_knn_is_perfect_on_the_training_set_with_k_1():
    features = torch.randn(30, 8)
    labels = torch.arange(30) % 4
    assert knn_classify(features, labels, features, labels, k=1) == (100.0, 100.0)


@pytest.mark.parametrize("kwargs, message", [({"k": 0}, "k must be >= 1, got 0"),
                                             ({"T": 0.0}, "temperature T must be > 0, got 0.0")])
def test_bad_knn_parameters_are_named(kwargs, message):
    f, l = torch.randn(5, 3), torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError, match=message):
        knn_classify(f, l, f, l, **kwargs)


def test_extract_features_keeps_order_and_restores_train_mode():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    model.train()
    data = [(torch.ones(3, 2, 2) * i, torch.tensor([i, i, i])) for i in range(3)]
    features, labels = extract_features(model, data, "cpu")
    assert features.shape == (9, 2) and labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert model.training


def test_the_bank_read_in_blocks_gives_the_same_neighbours_as_the_whole_bank():
    """The bank is normalised block by block (no normalised copy of a 10 GB bank); the k nearest rows and their
    similarities must be those of a brute-force cosine top-k over the whole bank."""
    from dino_tutorial.knn import nearest_neighbours
    generator = torch.Generator().manual_seed(3)
    bank, queries = torch.randn(101, 8, generator=generator) * 5, torch.randn(13, 8, generator=generator)
    queries = torch.nn.functional.normalize(queries, dim=1)
    cosine = queries @ torch.nn.functional.normalize(bank, dim=1).T
    expected_sim, expected_idx = cosine.topk(10, dim=1)
    for elements in (8, 80, 2 ** 20):                       # blocks of 1 row, of 10 rows, one block
        similarity, index = nearest_neighbours(bank, queries, 10, max_chunk_elements=elements)
        torch.testing.assert_close(similarity, expected_sim)
        assert torch.equal(index, expected_idx)


# ---- the protocol's details, each stated as a property (found by mutation testing)

def test_the_default_protocol_is_the_papers_k_20_and_t_0_07():
    import inspect
    from dino_tutorial.knn import knn_classify
    for fn in (knn_hits, knn_classify):
        parameters = inspect.signature(fn).parameters
        assert (parameters["k"].default, parameters["T"].default) == (20, 0.07), fn.__name__


@pytest.mark.parametrize("arguments, message", [
    (dict(k=0), "k must be >= 1"),
    (dict(T=0.0), "temperature T must be > 0"),
    (dict(test_features=torch.randn(3, 5)), r"features must be \(N, D\) and \(M, D\) with the same D, got \(6, 4\) "
                                            r"and \(3, 5\)"),
    (dict(train_features=torch.randn(6)), r"features must be \(N, D\) and \(M, D\)"),
    (dict(test_features=torch.randn(3)), r"features must be \(N, D\) and \(M, D\)"),
    (dict(train_labels=torch.zeros(5, dtype=torch.long)), "^features and labels must have the same number of rows$"),
    (dict(test_labels=torch.zeros(2, dtype=torch.long)), "^features and labels must have the same number of rows$"),
    (dict(train_features=torch.randn(0, 4), train_labels=torch.zeros(0, dtype=torch.long)),
     "^k-NN needs at least one training and one test sample$"),
    (dict(test_features=torch.randn(0, 4), test_labels=torch.zeros(0, dtype=torch.long)),
     "^k-NN needs at least one training and one test sample$"),
])
def test_each_bad_input_is_named_in_its_error(arguments, message):
    inputs = dict(train_features=torch.randn(6, 4), train_labels=torch.zeros(6, dtype=torch.long),
                  test_features=torch.randn(3, 4), test_labels=torch.zeros(3, dtype=torch.long))
    inputs.update(arguments)
    with pytest.raises(ValueError, match=message):
        knn_hits(**inputs)


def test_one_training_sample_and_one_query_are_enough():
    top1, top5 = knn_hits(torch.tensor([[1.0, 0.0]]), torch.tensor([1]), torch.tensor([[0.5, 0.5]]), torch.tensor([1]),
                          num_classes=3)
    assert top1.tolist() == [True] and top5.tolist() == [True]


def test_a_class_whose_votes_are_below_one_still_wins():
    """exp(s / T) is below 1 for a negative similarity: such a vote is small but real, and a class with only
    that vote (and every other class with none) is the prediction."""
    train = torch.tensor([[-1.0, 0.2]])
    top1, _ = knn_hits(train, torch.tensor([2]), torch.tensor([[1.0, 0.0]]), torch.tensor([2]), k=1, num_classes=4)
    assert top1.tolist() == [True]


def test_chunks_that_do_not_divide_the_bank_evenly_give_the_same_hits():
    """max_chunk_elements 2.5 x the bank: chunks of 2 queries (an integer division), the same hits as one chunk."""
    generator = torch.Generator().manual_seed(5)
    train, test = torch.randn(10, 3, generator=generator), torch.randn(7, 3, generator=generator)
    labels, test_labels = torch.arange(10) % 3, torch.arange(7) % 3
    whole = knn_hits(train, labels, test, test_labels, k=4)
    chunked = knn_hits(train, labels, test, test_labels, k=4, max_chunk_elements=25)
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])


def test_extract_features_names_an_empty_loader():
    from dino_tutorial.knn import extract_features
    with pytest.raises(ValueError, match="^extract_features got an empty loader: no images to embed$"):
        extract_features(torch.nn.Identity(), [], "cpu")


def test_a_call_with_the_defaults_is_the_papers_protocol():
    """Two banks where the paper's k = 20 and T = 0.07 decide: the 21st neighbour tips the vote, and a
    temperature of 1 lets two fair neighbours outvote a perfect one. Compared by behaviour (mutated defaults
    are invisible to inspect.signature under some tools)."""
    def at(angles):
        return torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)

    query, label = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    # 10 neighbours of class 0 at 0.10 rad, 11 of class 1 at 0.12 rad: 20 neighbours say 0, 21 say 1
    bank_k = at(torch.cat([torch.full((10,), 0.10), torch.full((11,), 0.12)]))
    labels_k = torch.cat([torch.zeros(10), torch.ones(11)]).long()
    assert knn_hits(bank_k, labels_k, query, label)[0].item()
    assert not knn_hits(bank_k, labels_k, query, label, k=21)[0].item()
    # one neighbour of class 0 at similarity 1, two of class 1 at about 0.9
    bank_t = at(torch.tensor([0.0, 0.451, 0.451]))
    labels_t = torch.tensor([0, 1, 1])
    assert knn_hits(bank_t, labels_t, query, label)[0].item()
    assert not knn_hits(bank_t, labels_t, query, label, T=1.07)[0].item()
    assert knn_classify(bank_t, labels_t, query, label)[0] == 100.0
