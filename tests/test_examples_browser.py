"""examples/web: the page computes Python's cam in a real headless Chromium, fetching nothing
from the internet.

Needs Node.js, ``npm ci`` in examples/web (onnxruntime-web, playwright-core; no browser
download) and Debian's Chromium (``apt-get install -y chromium``); set
ONNX_GRADCAM_SKIP_BROWSER=1 to skip. ONNX_GRADCAM_SCREENSHOT=PATH keeps the page's screenshot.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from onnx_gradcam.images import read_image, resize
from tests.examples_support import (
    EXAMPLES,
    ROOT,
    exported,
    require,
    require_node,
    run_node,
    scene,
    write_png,
)

FOLDER = EXAMPLES / "web"
SAMPLE = ROOT / "models" / "samples" / "2_triangle.png"  # for a telling screenshot
SKIP = "ONNX_GRADCAM_SKIP_BROWSER"
CHROMIUM = os.environ.get("ONNX_GRADCAM_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def node() -> str:
    node = require_node(FOLDER, SKIP)
    require(Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is not None,
            f"Chromium ({CHROMIUM})", "apt-get update && apt-get install -y chromium", SKIP)
    return node


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves examples/ (the page, the shared module, node_modules) and /_model/ from a
    test folder."""

    models: Path

    def translate_path(self, path: str) -> str:
        if path.startswith("/_model/"):
            return str(self.models / Path(path.split("?")[0]).name)
        return super().translate_path(path)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    handler = type("Handler", (_Handler,), {"models": tmp_path})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(EXAMPLES)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_page_computes_pythons_cam_in_headless_chromium(node: str, server: str,
                                                        tmp_path: Path) -> None:
    ex, model = exported(tmp_path)
    size = ex.preprocessing().size
    assert size is not None
    # an image already at the model's size: no resize, so any difference is the model's
    rgb = read_image(SAMPLE) if SAMPLE.exists() else scene(*size, seed=1)
    image = write_png(tmp_path / "scene.png", resize(rgb, size))
    shot = Path(os.environ.get("ONNX_GRADCAM_SCREENSHOT", tmp_path / "page.png"))
    url = f"{server}/web/index.html?model=/_model/{model.name}"
    proc = run_node(node, FOLDER, "e2e.mjs", "--url", url, "--image", image, "--out",
                    tmp_path / "result.json", "--screenshot", shot, "--chromium", CHROMIUM)
    report = json.loads((tmp_path / "result.json").read_text())
    assert proc.returncode == 0, (proc.stderr, report)
    assert report["external"] == [], "the page fetched something from outside localhost"
    assert report["pageErrors"] == []
    cam = np.asarray(report["cam"], np.float32).reshape(report["camDims"])
    want = ex.explain_images([image])
    assert cam.shape == want.cams.shape
    assert np.abs(cam - want.cams).max() <= 1e-3
    assert report["target"] == int(want.targets[0])
    assert shot.stat().st_size > 0
