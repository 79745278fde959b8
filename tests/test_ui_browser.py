"""The Prefect UI really shows what a finetune-gpt2 run publishes: a headless Chromium opens the run's pages.

One tiny run through a real server and worker, then one browser driven over the DevTools protocol
(a small client over `websockets`, which ships with Prefect): the flow run page with its Logs tab
("[rank 0]" lines) and Artifacts tab (keys and descriptions), the artifact pages (metrics table,
loss-curve image, per-rank table, lineage markdown), and the V2 UI's Artifacts tab. A direct
`?tab=Artifacts` link does not work in the V1 UI (the tab is hidden until the run has loaded, so
the page falls back to Logs): the test clicks the tab as a person would.

Screenshots land in build/ui-screenshots/ (git-ignored); the test prints their paths.
"""
from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from flows import stack as st

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
SHOTS = REPO / "build" / "ui-screenshots"
pytestmark = pytest.mark.slow


def _ensure_chromium() -> str:
    """Debian's chromium, installed with apt-get when missing; a failed install fails the test, loudly."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = [sudo + ["apt-get", "update"], sudo + ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]]
    for argv in steps:
        r = subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900)
        if r.returncode != 0:
            pytest.fail(f"{CHROMIUM} is missing and `{' '.join(argv)}` failed (exit {r.returncode}):\n"
                        f"{(r.stdout + r.stderr)[-2000:]}")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"apt-get installed chromium but {CHROMIUM} is still missing")
    return CHROMIUM


class Browser:
    """A headless Chromium with one page, driven over the DevTools protocol."""

    def __init__(self, binary: str, width: int = 1400, height: int = 1000):
        from websockets.sync.client import connect

        self.profile = tempfile.mkdtemp(prefix="mftasks-chromium-")
        argv = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
                "--remote-debugging-port=0", "about:blank"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            port = self._devtools_port(timeout=30)
            pages = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
            target = next(p for p in pages if p["type"] == "page")
            self.ws = connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
            self._ids = itertools.count(1)
            self.call("Page.enable")
            self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                      mobile=False)
        except BaseException:
            self.close()
            raise

    def _devtools_port(self, timeout: float) -> int:
        """Chromium picks a free port for --remote-debugging-port=0 and writes it to the profile."""
        path = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if path.exists() and path.read_text().strip():
                return int(path.read_text().split()[0])
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with code {self.proc.returncode} before opening DevTools")
            time.sleep(0.1)
        raise RuntimeError(f"chromium did not open DevTools within {timeout:.0f}s")

    def call(self, method: str, **params) -> dict:
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:  # events arrive in between; we only wait for our answer
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expression: str):
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def text(self) -> str:
        """What a person sees: the page's rendered text."""
        return self.js("document.body ? document.body.innerText : ''") or ""

    def wait_for_text(self, *needles: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            missing = [n for n in needles if n not in text]
            if not missing:
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"not shown after {timeout:.0f}s: {missing}; page text:\n{text[:3000]}")
            time.sleep(0.3)

    def screenshot(self, path: Path, settle: float = 1.0) -> Path:
        time.sleep(settle)  # let charts and the run graph finish drawing
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        print(f"screenshot: {path}")
        return path

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        if self.proc.poll() is None:  # chromium's helpers share its process group (own session)
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def finished_run(local_stack, finished_pipeline):
    """(stack, flow run id, chromium) after the session's tiny finetune-gpt2 run completed (tests/conftest.py).

    That server runs without basic auth on 127.0.0.1, so the UI opens without a login."""
    chromium = _ensure_chromium()
    run, _ = finished_pipeline
    return local_stack, run["id"], chromium


@pytest.fixture(scope="module")
def browser(finished_run):
    b = Browser(finished_run[2])
    try:
        yield b
    finally:
        b.close()


def _artifact_ids(stack: st.Stack, run_id: str) -> dict[str, str]:
    with stack.client() as c:
        arts = c.request("POST", "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}).json()
    return {a["key"]: a["id"] for a in arts if a.get("key")}


def test_flow_run_page_shows_rank_logs_and_artifacts(finished_run, browser):
    stack, run_id, _ = finished_run
    browser.open(st.flow_run_url(stack, run_id))  # the link `mftasks deployment run` prints
    text = browser.wait_for_text("finetune-gpt2", "Completed", "[rank 0]")  # Logs is the default tab
    assert "[rank 0] [mftasks] train" in text
    browser.screenshot(SHOTS / "flow-run-logs.png")

    assert browser.js("(() => { const t = document.getElementById('artifacts'); t && t.click(); return !!t })()")
    # the flow run's own artifacts (the V1 tab leaves its "Task runs" part empty: per-rank tables are checked
    # on their artifact page and in the V2 UI below)
    browser.wait_for_text("eval-metrics", "evaluation (delta vs previous run)", "loss-curve", "training loss",
                          "lineage", "tokenizer → dataset → checkpoint", "loss-table", "predictions")
    browser.screenshot(SHOTS / "flow-run-artifacts.png")


def test_artifact_pages_render_their_content(finished_run, browser):
    stack, run_id, _ = finished_run
    ids = _artifact_ids(stack, run_id)

    browser.open(f"{stack.ui_url}/artifacts/artifact/{ids['eval-metrics']}")
    browser.wait_for_text("eval-metrics", "finetune_merged_PPL", "pretrain_base_PPL", "delta")
    assert browser.js("document.querySelectorAll('table').length") >= 1  # a table, not raw JSON
    browser.screenshot(SHOTS / "artifact-eval-metrics.png")

    browser.open(f"{stack.ui_url}/artifacts/artifact/{ids['loss-curve']}")
    browser.wait_for_text("loss-curve", "training loss")
    deadline = time.monotonic() + 15
    while True:  # the SVG data URL decoded into a real picture
        img = browser.js("(() => { const i = [...document.images].find(i => i.src.startsWith('data:image/svg+xml'));"
                         " return i ? [i.complete, i.naturalWidth, i.naturalHeight] : null })()")
        if (img and img[0] and img[1] > 0) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert img and img[0] and img[1] > 0 and img[2] > 0, f"loss curve image not rendered: {img}"
    browser.screenshot(SHOTS / "artifact-loss-curve.png")

    browser.open(f"{stack.ui_url}/artifacts/artifact/{ids['ranks-train']}")
    browser.wait_for_text("ranks-train", "per-rank table of stage train", "last_step", "failure_class")
    header = browser.js("[...document.querySelectorAll('th')].map(th => th.innerText.trim())")
    assert {"rank", "pid", "exit", "last_step", "log"} <= set(header), header
    browser.screenshot(SHOTS / "artifact-ranks-train.png")

    browser.open(f"{stack.ui_url}/artifacts/artifact/{ids['lineage']}")
    browser.wait_for_text("lineage", "merged model", "adapter (LoRA)", "base model + adapter")
    headings = browser.js("[...document.querySelectorAll('h1,h2,h3')].map(h => h.innerText.trim())")
    assert "Lineage" in headings, headings  # markdown rendered, not shown as "## Lineage"
    assert "## Lineage" not in browser.text()
    browser.screenshot(SHOTS / "artifact-lineage.png")


def test_v2_ui_lists_every_artifact(finished_run, browser):
    """The server sends "/" to the V2 UI by default; its run page takes ?tab= directly."""
    stack, run_id, _ = finished_run
    browser.open(f"{stack.ui_url}/v2/runs/flow-run/{run_id}?tab=Artifacts")
    browser.wait_for_text("eval-metrics", "loss-curve", "lineage", "ranks-train", "ranks-lora",
                          "per-rank table of stage train", "predictions", "progress-train")
    browser.screenshot(SHOTS / "v2-flow-run-artifacts.png", settle=3.0)  # its run graph draws slowly
    browser.open(f"{stack.ui_url}/v2/runs/flow-run/{run_id}?tab=Logs")
    browser.wait_for_text("[rank 0]")
