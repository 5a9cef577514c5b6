"""The yardsticks beside every learnt k-NN number: raw pixels, random networks over seeds, bootstrap intervals."""
from __future__ import annotations

import math

import pytest
import torch

from dino_tutorial.baselines import (bootstrap_interval, pixel_features, pixel_knn, random_init_knn,
                                     split_features)
from dino_tutorial.knn import knn_classify, knn_hits
from dino_tutorial.model import build_backbone


def test_knn_hits_average_to_knn_classify_accuracies():
    torch.manual_seed(0)
    bank, bank_labels = torch.randn(200, 16), torch.randint(0, 7, (200,))
    queries, labels = torch.randn(90, 16), torch.randint(0, 7, (90,))
    top1, top5 = knn_hits(bank, bank_labels, queries, labels, k=10, max_chunk_elements=1000)
    assert top1.shape == top5.shape == (90,) and top1.dtype == torch.bool
    assert bool((top5 | ~top1).all())                                  # a top-1 hit is a top-5 hit
    expected = knn_classify(bank, bank_labels, queries, labels, k=10)
    assert (100 * top1.sum().item() / 90, 100 * top5.sum().item() / 90) == pytest.approx(expected)


def test_bootstrap_interval_matches_the_binomial_standard_error():
    # 1,000 queries, 600 right: the normal approximation gives 60 +- 1.96 * sqrt(0.6 * 0.4 / 1000) = 60 +- 3.04
    hits = torch.zeros(1000, dtype=torch.bool)
    hits[:600] = True
    interval = bootstrap_interval(hits, samples=4000)
    half_width = 100 * 1.96 * math.sqrt(0.6 * 0.4 / 1000)
    assert interval.top1 == pytest.approx(60.0)
    assert interval.low < 60 < interval.high
    assert (interval.high - interval.low) / 2 == pytest.approx(half_width, rel=0.1)


def test_bootstrap_interval_narrows_with_more_queries():
    small = bootstrap_interval(torch.arange(100) % 2 == 0)
    large = bootstrap_interval(torch.arange(10000) % 2 == 0)
    # the width scales with 1 / sqrt(M): 100x the queries, a tenth of the width
    assert (large.high - large.low) == pytest.approx((small.high - small.low) / 10, rel=0.25)


def test_bootstrap_interval_refuses_bad_input():
    with pytest.raises(ValueError, match="hits"):
        bootstrap_interval(torch.zeros(0, dtype=torch.bool))
    with pytest.raises(ValueError, match="level"):
        bootstrap_interval(torch.ones(5, dtype=torch.bool), level=1.5)


def test_pixel_features_are_centred_on_the_training_mean(tiny_folder):
    features = pixel_features(tiny_folder, size=8)
    train, _ = features["train"]
    assert train.shape[1] == 3 * 8 * 8
    assert train.mean(dim=0).abs().max() < 1e-5
    assert features["val"][0].mean(dim=0).abs().max() > 1e-3          # val is centred by the train mean, not its own


def test_pixel_knn_separates_images_whose_classes_differ_in_colour(tiny_folder):
    # the tiny folder's classes are red and green blobs: their pixels alone classify them
    assert pixel_knn(tiny_folder, size=8, k=3, samples=200).top1 == 100.0


def test_random_init_knn_gives_one_value_per_seed_and_repeats_a_seed(tiny_folder):
    spread = random_init_knn("resnet18_w16", tiny_folder, image_size=32, seeds=(0, 1, 0), k=3)
    assert len(spread.values) == 3 and spread.values[0] == spread.values[2]
    assert spread.sd >= 0 and min(spread.values) <= spread.mean <= max(spread.values)


def test_split_features_embed_both_splits_in_eval_mode(tiny_folder):
    backbone, dim = build_backbone("resnet18_w16")
    backbone.train()
    features = split_features(backbone, tiny_folder, image_size=32)
    assert features["train"][0].shape == (12, dim) and features["val"][0].shape == (12, dim)
    assert backbone.training                                            # the mode is restored afterwards
