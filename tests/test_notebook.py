"""The chapters' shared setup: one figure style, reproducible seeds, the device, and a glue that never fails."""
import matplotlib
import pytest
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


def test_a_quoted_number_is_also_written_out_where_the_glue_role_is_not_rendered(monkeypatch, capsys):
    import sys
    monkeypatch.setitem(sys.modules, "myst_nb", None)        # Colab: no MyST-NB, the text shows the role
    monkeypatch.setitem(sys.modules, "IPython", None)        # plain Python: no cell to wait for, at once
    monkeypatch.setitem(sys.modules, "IPython.display", None)
    glue("knn_top1", "56.2", display=False)
    assert capsys.readouterr().out == "Quoted in the text: knn_top1 = 56.2\n"
    glue("shown_by_its_cell", "1", display=True)               # displayed values are not repeated
    assert capsys.readouterr().out == ""


def test_the_values_of_one_cell_are_written_in_one_line_after_it(monkeypatch):
    import sys
    import types
    monkeypatch.setitem(sys.modules, "myst_nb", None)
    handlers, shown = [], []

    class Events:
        def register(self, event, handler):
            handlers.append((event, handler))

    shell = types.SimpleNamespace(events=Events())
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: shell
    display = types.ModuleType("IPython.display")
    display.display = lambda bundle, raw: shown.append(bundle["text/markdown"])
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", display)
    glue("a", "1", display=False)
    glue("b", "2.5", display=False)
    assert shown == [] and [event for event, _ in handlers] == ["post_run_cell"]    # registered once
    handlers[0][1](None)                                      # the cell has finished
    assert shown == ["*Quoted in the text:* a = 1; b = 2.5"]
    handlers[0][1](None)                                      # a later cell that glues nothing: no line
    assert len(shown) == 1


def test_course_file_prefers_the_local_copy_and_downloads_a_missing_one_whole(tmp_path, monkeypatch, capsys):
    import io
    import urllib.request
    from dino_tutorial.notebook import course_file
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "here.txt").write_text("local")
    asked = []

    def fake_urlopen(address, timeout):
        asked.append(address)
        return io.BytesIO(b"remote bytes")

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    assert course_file("results/here.txt", tmp_path).read_text() == "local" and not asked
    got = course_file("assets/new.pth", tmp_path, url="https://example.invalid/book/")
    assert asked == ["https://example.invalid/book/assets/new.pth"]
    assert got.read_bytes() == b"remote bytes" and not list(tmp_path.rglob("*.part"))
    assert "downloaded assets/new.pth (12 bytes)" in capsys.readouterr().out


def test_course_file_offline_says_so_in_one_line_and_returns_the_missing_path(tmp_path, monkeypatch, capsys):
    import urllib.error
    import urllib.request
    from dino_tutorial.notebook import course_file

    def offline(address, timeout):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    got = course_file("results/missing.json", tmp_path)
    assert not got.exists() and got == tmp_path / "results" / "missing.json"
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "could not be downloaded" in out[0] and "no network" in out[0]


def test_check_exercise_reports_blanks_in_one_line_and_lets_a_wrong_answer_raise(capsys):
    from dino_tutorial.notebook import check_exercise

    def unfinished():
        raise NotImplementedError("sample_crop_box still has blanks")

    def wrong(answer):
        assert answer == 2, "expected 2"

    check_exercise(1, lambda f: f(), unfinished)
    check_exercise(2, lambda x: x + 1, ...)                      # a blank left: Ellipsis + 1 is a TypeError
    check_exercise(3, lambda x: x.shape, None)                   # nothing returned
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [f"Exercise {n} is not done yet" for n in (1, 2, 3)]
    assert "sample_crop_box still has blanks" in lines[0]
    with pytest.raises(AssertionError, match="expected 2"):
        check_exercise(4, wrong, 3)
    with pytest.raises(TypeError):
        check_exercise(5, lambda x: x + "a", 1)                  # a real error is not taken for a blank
