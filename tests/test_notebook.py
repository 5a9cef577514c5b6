"""The chapters' shared setup: one figure style, reproducible seeds, the device, and a glue that never fails."""
import matplotlib
import torch

from dino_tutorial.notebook import glue, setup


def test_setup_seeds_everything_and_sets_the_figure_style():
    threads = torch.get_num_threads()
    try:
        device = setup(seed=3, font_size=9, one_thread_on_small_cpu=True)
        a = torch.rand(4)
        setup(seed=3)
        b = torch.rand(4)
        assert torch.equal(a, b) and device.type in ("cpu", "cuda")
        assert matplotlib.rcParams["font.size"] == 10 and matplotlib.rcParams["axes.labelsize"] == 10
        setup(seed=0, font_size=9)
        assert matplotlib.rcParams["font.size"] == 9 and matplotlib.rcParams["axes.titlesize"] == 9
    finally:
        torch.set_num_threads(threads)


def test_glue_forwards_to_myst_nb_and_does_nothing_without_it(monkeypatch):
    import sys
    import types
    calls = []
    fake = types.ModuleType("myst_nb")
    fake.glue = lambda name, value, display=True: calls.append((name, value, display))
    monkeypatch.setitem(sys.modules, "myst_nb", fake)
    glue("a_number", "1.5", display=False)
    assert calls == [("a_number", "1.5", False)]
    monkeypatch.setitem(sys.modules, "myst_nb", None)        # as in Colab: importing it fails
    assert glue("a_number", "1.5") is None
