"""Engine decisions that a CPU can check: whether a run is compiled, and what stops and skips agree on alone."""
import warnings

import torch
from torch import nn

from dino_tutorial.engine.compilation import compile_decision
from dino_tutorial.engine.control import StopRequest
from dino_tutorial.model import build_backbone


def test_a_model_with_sync_batchnorm_is_not_compiled_and_the_reason_names_them():
    backbone, _ = build_backbone("resnet18_w16", small_images=True)
    assert compile_decision(True, backbone) == (True, "")
    assert compile_decision(False, backbone) == (False, "")
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(backbone)
    compiled, why = compile_decision(True, synced)
    count = sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
    assert not compiled and count > 10 and f"{count} SyncBatchNorm" in why


def test_one_process_stops_on_its_signal_and_skips_a_step_without_views():
    stop = StopRequest()
    cpu = torch.device("cpu")
    assert stop.agree(True, 1, cpu) == (False, False)
    assert stop.agree(False, 1, cpu) == (False, True)
    stop.signal = 15
    assert stop.agree(True, 1, cpu) == (True, False)
