"""Shell text survives the notebook round trip, and the shipped job script is one that sbatch accepts."""
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_notebook_line_is_a_shebang_that_lost_its_hash():
    # jupytext reads a commented "#!" as a shell magic, so "#!/bin/bash" can come back as "!/bin/bash"
    for notebook in sorted((ROOT / "book").glob("*.ipynb")):
        for cell in json.loads(notebook.read_text())["cells"]:
            for line in "".join(cell["source"]).splitlines():
                assert not line.lstrip().startswith("!/"), f"{notebook.name}: mangled shebang {line!r}"


def test_slurm_script_starts_with_a_shebang_and_launches_the_recipe():
    script = (ROOT / "tools" / "slurm_rn50_imagenet.sh").read_text().splitlines()
    assert script[0] == "#!/bin/bash"                      # sbatch refuses a script without it
    assert any(line.startswith("#SBATCH --nodes=") for line in script)
    assert any("--preset rn50_imagenet" in line for line in script)
