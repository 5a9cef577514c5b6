"""JupyterLab opens a chapter's py:percent twin as a notebook: a Jupyter server on localhost with jupytext's
contents manager serves ``book/NN_name.py`` through its contents API as a notebook with cells."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

BOOK = Path(__file__).resolve().parents[1] / "book"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, token: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_jupyter_server_opens_a_py_twin_as_a_notebook(tmp_path):
    pytest.importorskip("jupyter_server", reason="jupyter_server (installed with jupyterlab) is not installed")
    pytest.importorskip("jupytext", reason="jupytext is not installed")
    port, token = _free_port(), uuid.uuid4().hex
    command = [sys.executable, "-m", "jupyter_server", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={BOOK}", "--allow-root",
               "--ServerApp.contents_manager_class=jupytext.TextFileContentsManager"]
    env = {"JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTER_DATA_DIR": str(tmp_path / "data")}
    server = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                _get(f"{base}/api/status", token)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    server.kill()
                    pytest.fail(f"the Jupyter server did not start: {server.communicate()[1][-2000:]}")
                time.sleep(0.5)
        model = _get(f"{base}/api/contents/01_multi_crop.py?type=notebook&content=1", token)
        assert model["type"] == "notebook" and model["format"] == "json"
        cells = model["content"]["cells"]
        assert len(cells) > 10 and {"markdown", "code"} <= {c["cell_type"] for c in cells}
        twin = (BOOK / "01_multi_crop.py").read_text()
        assert all(c["source"].splitlines()[0] in twin for c in cells if c["source"].strip())
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
