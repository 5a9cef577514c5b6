"""The benchmark scripts run and their tables can be read back (no timing is asserted: they only print numbers).

The GPU report cannot run without a GPU, so its summary is checked on the tables the same scripts print on the
CPU: every headline number it quotes must come from them.
"""
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from gpu_report import markdown_tables, number, summary  # noqa: E402

TINY = ["--device", "cpu", "--arch", "resnet18", "--batch", "4", "--steps", "1", "--warmup", "1", "--global-size", "64",
        "--local-size", "32", "--local-crops", "2", "--out-dim", "256", "--workers", "1", "--synthetic", "8"]


def run_script(name, *args) -> str:
    done = subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True,
                          timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_end_to_end_prints_one_row_per_pipeline():
    output = run_script("end_to_end.py", *TINY)
    rows = {r["pipeline"]: r for t in markdown_tables(output) for r in t if "pipeline" in r}
    assert set(rows) == {"reference", "fast", "device"}
    assert all(number(r["JPEG to step, images/s"]) > 0 and number(r["data path alone, images/s"]) > 0
               for r in rows.values())
    assert "GFLOP per image" in output


@pytest.mark.slow
def test_gpu_report_runs_every_benchmark_and_its_summary_quotes_their_tables(tmp_path):
    """--cpu-smoke runs the whole plan with tiny settings; every summary line must carry a measured number."""
    output = run_script("gpu_report.py", "--cpu-smoke", "--save", str(tmp_path / "report.md"))
    assert "[exit code" not in output and "[stopped after" not in output
    summary_part = output[output.index("===== summary"):]
    lines = [line for line in summary_part.splitlines() if line.startswith("| ") and "measure |" not in line]
    assert len(lines) >= 3 + 1 + 1 + 3           # pipelines, a step variant, a k-NN scale, augment rows
    assert not [line for line in lines if "not measured" in line or "None" in line]
    e2e = output[output.index("===== end_to_end"):output.index("===== train_step")]
    rows = {r["pipeline"]: r for t in markdown_tables(e2e) for r in t if "pipeline" in r}
    for name in ("reference", "fast", "device"):
        line = next(line for line in lines if f"{name} pipeline" in line)
        assert f"{number(rows[name]['JPEG to step, images/s']):,.0f}" in line
    saved = (tmp_path / "report.md").read_text()
    assert all(line in saved for line in lines) and "===== end_to_end" in saved


def test_markdown_tables_are_read_back_cell_by_cell():
    text = "intro\n| a | b c |\n|---|---:|\n| x | 1,234.5 |\n| y | 2 |\n\nafter\n| z |\n|---|\n| 3 |\n"
    tables = markdown_tables(text)
    assert tables == [[{"a": "x", "b c": "1,234.5"}, {"a": "y", "b c": "2"}], [{"z": "3"}]]
    assert number("1,234.5 s") == 1234.5 and number("n/a") is None


def test_mfu_peak_is_the_one_of_the_autocast_dtype_the_trainer_picks():
    import torch
    from end_to_end import peak_flops
    assert peak_flops("Tesla T4", torch.float16) == 65e12          # Turing: fp16 tensor cores only
    assert peak_flops("Tesla T4", torch.bfloat16) is None
    for gpu, peak in (("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA H100 PCIe", 756e12)):
        assert peak_flops(gpu, torch.bfloat16) == peak_flops(gpu, torch.float16) == peak
    assert peak_flops("Some Future GPU", torch.bfloat16) is None


def test_benchmark_steps_on_a_gpu_without_bf16_run_fp16_with_a_scaler_as_the_trainer(monkeypatch):
    """On a T4 the trainer's amp='auto' is fp16 (with a GradScaler): the package's benchmark steps follow it."""
    import torch
    import end_to_end
    import train_step
    t4 = lambda amp, device: torch.float16 if device.type == "cuda" else None      # noqa: E731
    monkeypatch.setattr(train_step, "amp_dtype", t4)
    monkeypatch.setattr(end_to_end, "amp_dtype", t4)
    cuda = torch.device("cuda")
    package = [v for v in train_step.variants(cuda, compile_=True) if v.package and v.channels_last]
    assert len(package) == 2 and all(v.fp16 and not v.bf16 and "fp16" in v.name for v in package)
    fast = end_to_end.step_variant("fast", cuda)
    assert fast.fp16 and not fast.bf16 and fast.channels_last
    cpu = end_to_end.step_variant("fast", torch.device("cpu"))
    assert not (cpu.fp16 or cpu.bf16 or cpu.channels_last)                   # the CPU keeps fp32, NCHW
