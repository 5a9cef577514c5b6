"""The benchmark scripts run and their tables can be read back (no timing is asserted: they only print numbers).

The GPU report cannot run without a GPU, so its summary is checked on the tables the same scripts print on the
CPU: every headline number it quotes must come from them.
"""
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from gpu_report import benchmark_plan, book_tree, markdown_tables, number, summary  # noqa: E402

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
    # the trainer's data paths ran first, each with finite losses, and the same views gave the same loss
    paths = output[output.index("===== paths"):output.index("===== end_to_end")]
    trained = {r["path"]: r for t in markdown_tables(paths) for r in t if "path" in r}
    for name in ("pil", "fast"):
        losses = [number(x) for x in trained[name]["first losses"].split(",")]
        assert len(losses) == 3 and all(math.isfinite(x) for x in losses) and trained[name]["all finite"] == "yes"
    checks = [r for t in markdown_tables(paths) for r in t if r.get("within") or r.get("result")]
    assert checks and all(r.get("within", r.get("result")) == "yes" for r in checks)
    assert "amp='auto' picks fp32 on cpu" in paths
    assert "| chapter 08 by papermill, smoke mode | skipped on the CPU" in summary_part


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


def test_knn_benchmark_reports_a_scale_that_runs_out_of_memory_and_runs_the_others(monkeypatch, capsys):
    """A scale too large for the device prints a row naming it and the memory it needed, not nothing."""
    import torch
    import knn as knn_benchmark
    cuda_message = ("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 15.77 GiB of "
                    "which 3.12 GiB is free.")
    cpu_message = "[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: not enough memory: you tried to " \
                  "allocate 10485760000 bytes."
    assert knn_benchmark.failed_allocation_bytes(cuda_message) == 20 * 2 ** 30
    assert knn_benchmark.failed_allocation_bytes(cpu_message) == 10485760000
    assert knn_benchmark.is_out_of_memory(torch.cuda.OutOfMemoryError(cuda_message))
    assert knn_benchmark.is_out_of_memory(RuntimeError("out of memory"))
    assert not knn_benchmark.is_out_of_memory(RuntimeError("shape mismatch"))
    real = knn_benchmark.knn_classify

    def tight_memory(train, *args, **kwargs):
        if len(train) == 300:
            raise torch.cuda.OutOfMemoryError(cuda_message)
        if len(train) == 400:
            raise RuntimeError(cpu_message)
        return real(train, *args, **kwargs)

    monkeypatch.setattr(knn_benchmark, "knn_classify", tight_memory)
    knn_benchmark.main(["--scales", "200x20", "300x30", "400x40", "--dim", "8", "--classes", "5"])
    rows = {r["train features"]: r for t in markdown_tables(capsys.readouterr().out) for r in t}
    assert set(rows) == {"200", "300", "400"}
    assert number(rows["200"]["wall s"]) >= 0
    bank_300 = (300 + 30) * 8 * 4 / 2 ** 20
    assert rows["300"]["wall s"] == "out of memory"
    assert rows["300"]["peak extra RSS MiB"] == f"out of memory: bank {bank_300:,.0f} MiB + a failed allocation " \
                                                f"of {20 * 1024:,} MiB"
    assert rows["400"]["peak extra RSS MiB"].endswith(f"a failed allocation of {10485760000 / 2 ** 20:,.0f} MiB")
    with pytest.raises(RuntimeError, match="shape"):                     # other errors are not hidden
        knn_benchmark.measure_or_report(10, 2, 8, 5, torch.device("cpu"), 3,
                                        measure_fn=lambda *a: (_ for _ in ()).throw(RuntimeError("shape")))


def test_summary_says_which_knn_scale_ran_out_of_memory():
    knn = ("| train features | queries | queries per chunk | wall s | CPU s | queries/s (wall) | GFLOP/s (wall) | "
           "feature bank MiB | peak extra GPU MiB |\n" + "|---:" * 9 + "|\n"
           "| 100,000 | 10,000 | 671 | 0.50 | 0.40 | 20,000 | 8,000 | 859 | 260 |\n"
           "| 1,281,167 | 50,000 | n/a | out of memory | n/a | n/a | n/a | 10,400 | out of memory: bank 10,400 MiB "
           "+ a failed allocation of 20,480 MiB |\n")
    lines = summary({"knn": knn}).splitlines()
    assert "| k-NN 100,000 x 10,000 (s, peak extra MiB) | 0.50 s, 260 MiB |  |" in lines
    assert ("| k-NN 1,281,167 x 50,000 (s, peak extra MiB) | out of memory: bank 10,400 MiB + a failed allocation "
            "of 20,480 MiB | < 30 s |") in lines


def test_gpu_plan_starts_with_the_data_paths_runs_chapter_08_and_leaves_the_step_the_rest(tmp_path):
    plan = benchmark_plan("JPEGS")
    assert [name for name, _, _ in plan] == ["paths", "end_to_end", "knn", "augment", "chapter_08", "train_step"]
    assert sum(share for _, _, share in plan[:-1]) <= 0.85 and plan[-1][2] == 1.0
    assert dict((n, c) for n, c, _ in plan)["chapter_08"][-2:] == ["--chapter-08", "JPEGS"]
    assert dict((n, c) for n, c, _ in benchmark_plan("JPEGS", cpu_smoke=True))["chapter_08"] is None
    images = tmp_path / "jpegs"
    images.mkdir()
    for i in range(200):
        (images / f"{i:03d}.jpg").write_bytes(b"")
    root = book_tree(images, tmp_path / "root")
    for split, count in (("train", 16), ("val", 4)):
        classes = sorted((root / split).iterdir())
        assert len(classes) == 10 and all(len(list(c.iterdir())) == count for c in classes)
    linked = [p.resolve() for p in root.glob("*/*/*.jpg")]
    assert len(set(linked)) == 200                              # no image is in two classes or both splits


def test_summary_quotes_chapter_08s_results_and_the_data_paths():
    book = "| metric | value |\n|---|---:|\n| knn_top1 | 10.00 |\n| linear_top1 | 20.00 |\n\n[chapter_08: 41 s]"
    paths = ("Precision: amp='auto' picks bf16 on cuda\n\n| path | first losses | all finite | seconds |\n"
             "|---|---:|---:|---:|\n| device | 8.1000, 8.0500 | yes | 3.2 |\n")
    lines = summary({"chapter_08": book, "paths": paths}).splitlines()
    assert any(line.startswith("| chapter 08 by papermill, smoke mode | ran in 41 s; k-NN top-1 10.00%, linear "
                               "top-1 20.00%") for line in lines)
    assert "| autocast dtype of amp='auto' | bf16 |  |" in lines
    assert "| data path device: first losses, all finite, s | 8.1000, 8.0500; finite: yes; 3.2 s | finite |" in lines
