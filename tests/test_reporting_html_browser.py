"""report.html of a real tiny sweep, opened in headless Chromium over the DevTools protocol: it renders with no
console error, every image loads (naturalWidth > 0), and a screenshot is kept in the test's temp dir."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from raysel.report import main as report_main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.integration


class DevTools:
    """A minimal DevTools-protocol client over one page's websocket (websocket-client), keeping every event."""

    def __init__(self, url: str) -> None:
        import websocket  # the websocket-client test extra

        self.socket = websocket.create_connection(url, timeout=60)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(e.get("method") == event for e in self.events):
            assert time.monotonic() < deadline, f"Chromium sent no {event} within {timeout_s} s"
            self.events.append(json.loads(self.socket.recv()))


def start_chromium(profile: Path) -> tuple[subprocess.Popen, str]:
    """Headless Chromium with its own profile and no network services; returns it and its first page's websocket."""
    assert CHROMIUM, "Chromium is missing: `apt-get install -y chromium` (`make test` installs it when run as root)"
    process = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                                "--no-first-run", "--remote-debugging-port=0", f"--user-data-dir={profile}",
                                "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 60
    while not (port_file.exists() and port_file.read_text().strip()):
        assert process.poll() is None and time.monotonic() < deadline, "Chromium did not open its DevTools port"
        time.sleep(0.2)
    port = port_file.read_text().split()[0]
    pages = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
    return process, next(page["webSocketDebuggerUrl"] for page in pages if page["type"] == "page")


def test_report_html_renders_in_chromium_with_every_image_loaded(tiny_hiast_sweep, tmp_path: Path) -> None:
    assert tiny_hiast_sweep["code"] == 0
    output = tmp_path / "report"
    assert report_main([tiny_hiast_sweep["sweep_id"], "--results", str(tiny_hiast_sweep["results"]),
                        "--output", str(output)]) == 0
    page = output / "report.html"
    process, websocket_url = start_chromium(tmp_path / "profile")
    try:
        browser = DevTools(websocket_url)
        for domain in ("Page", "Runtime", "Log"):
            browser.call(f"{domain}.enable")
        browser.call("Page.navigate", url=page.as_uri())
        browser.wait_for("Page.loadEventFired")
        images = browser.call("Runtime.evaluate", returnByValue=True, expression=(
            "Array.from(document.images).map(i => ({complete: i.complete, width: i.naturalWidth}))"))["result"]["value"]
        title = browser.call("Runtime.evaluate", expression="document.title", returnByValue=True)["result"]["value"]
        shot = browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        (tmp_path / "report.png").write_bytes(base64.b64decode(shot["data"]))
        errors = [e for e in browser.events if e.get("method") == "Runtime.exceptionThrown"
                  or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
                  or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
        browser.socket.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert title == f"raysel report: {tiny_hiast_sweep['sweep_id']}"
    assert errors == []
    assert len(images) >= 2 and all(image["complete"] and image["width"] > 0 for image in images), images
    assert (tmp_path / "report.png").stat().st_size > 10_000
