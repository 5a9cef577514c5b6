"""The precision of a run: autocast dtype per GPU generation, deterministic cuBLAS, resuming in another precision."""
import os

import pytest
import torch

from dino_tutorial import checkpoint as ckpt
from dino_tutorial.engine.precision import amp_dtype, load_scaler_state, use_deterministic_kernels
from dino_tutorial.train import train

from test_train import tiny_config

CUDA = torch.device("cuda", 0)


def test_auto_precision_is_fp16_on_a_t4_and_bf16_on_an_a100():
    """A T4 (sm_75) only emulates bf16: auto must choose fp16 with a GradScaler there."""
    assert amp_dtype("auto", CUDA, bf16_native=lambda device: False) == torch.float16      # T4, V100
    assert amp_dtype("auto", CUDA, bf16_native=lambda device: True) == torch.bfloat16      # A100, H100
    assert amp_dtype("auto", torch.device("cpu")) is None
    assert amp_dtype("bf16", CUDA, bf16_native=lambda device: False) == torch.bfloat16    # asked for explicitly
    assert amp_dtype("none", CUDA) is None


def test_deterministic_runs_fix_the_cublas_workspace(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        use_deterministic_kernels(True, torch.device("cpu"))
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)


def test_an_empty_scaler_state_leaves_an_fp16_scaler_at_its_defaults():
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    load_scaler_state(scaler, torch.amp.GradScaler("cpu", enabled=False).state_dict())
    assert scaler.get_scale() == 65536.0


@pytest.mark.slow
def test_a_run_in_fp32_resumes_in_fp16(tiny_folder, tmp_path):
    """The checkpoint of an fp32 (or bf16) run holds an empty GradScaler state; an fp16 run resumes from it."""
    config = dict(knn_every=0, epochs=2, max_iters_per_epoch=1)
    train(tiny_config(tiny_folder, tmp_path / "run", amp="none", **{**config, "epochs": 1}))
    metrics = train(tiny_config(tiny_folder, tmp_path / "run", amp="fp16", **config))
    assert metrics["epoch"] == 2
    assert ckpt.load(tmp_path / "run" / "checkpoint.pth")["scaler"]["scale"] > 0


def test_deterministic_pooling_swaps_the_resnet_pool_for_a_mean_with_the_same_numbers_and_gradients():
    """CUDA has no deterministic backward for adaptive average pooling; the mean it is replaced by must give
    the same features and the same input gradients (checked on the CPU)."""
    import copy
    from dino_tutorial.engine.precision import GlobalMeanPool, deterministic_pooling
    from dino_tutorial.model import build_backbone
    torch.manual_seed(0)
    original, _ = build_backbone("resnet18_w16", small_images=True)
    swapped = copy.deepcopy(original)
    assert deterministic_pooling(swapped) == 1
    assert not any(isinstance(m, torch.nn.AdaptiveAvgPool2d) for m in swapped.modules())
    assert any(isinstance(m, GlobalMeanPool) for m in swapped.modules())
    x = torch.randn(3, 3, 32, 32, requires_grad=True)
    y = torch.randn(3, 3, 32, 32, requires_grad=True)
    with torch.no_grad():
        y.copy_(x)
    a, b = original.eval()(x), swapped.eval()(y)
    torch.testing.assert_close(a, b)
    a.square().sum().backward()
    b.square().sum().backward()
    torch.testing.assert_close(x.grad, y.grad)
