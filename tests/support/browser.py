"""Debian's headless Chromium driven over the Chrome DevTools Protocol, for the browser tests.

Nothing is downloaded: ``/usr/bin/chromium`` (apt, see scripts/setup.sh) is started with a throwaway profile and
``--remote-debugging-port=0``; the port it picked is read from ``DevToolsActivePort`` and one page is driven over
its WebSocket with the ``websockets`` client (already a requirement). Only the few CDP commands the tests need.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import requests
from websockets.sync.client import connect

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class BrowserError(AssertionError):
    pass


class Browser:
    """One headless Chromium with one page. ``with Browser(tmp) as b: b.goto(url); b.screenshot(path)``."""

    def __init__(self, profile_dir: Path, width: int = 1400, height: int = 900):
        self.profile_dir = Path(profile_dir)
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        # A port file left by an earlier Chromium with this profile would point at a closed port.
        (self.profile_dir / "DevToolsActivePort").unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--remote-debugging-port=0",
             f"--user-data-dir={self.profile_dir}", f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        port_file = self.profile_dir / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise BrowserError("chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        pages = [t for t in requests.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json() if t["type"] == "page"]
        self._connection = connect(pages[0]["webSocketDebuggerUrl"], max_size=64 * 1024 * 1024)
        self.ws = self._connection.__enter__()
        self._ids = itertools.count(1)
        self.send("Page.enable")
        self.send("Runtime.enable")

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._connection.__exit__(None, None, None)
        finally:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def send(self, method: str, **params: Any) -> dict:
        """One CDP command; its result (events arriving meanwhile are dropped)."""
        ident = next(self._ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == ident:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message.get("result", {})

    def js(self, expression: str) -> Any:
        """Evaluate JavaScript in the page (promises awaited); its value."""
        result = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}: {result['exceptionDetails'].get('text')} "
                               f"{result['exceptionDetails'].get('exception', {}).get('description', '')[:300]}")
        return result.get("result", {}).get("value")

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def wait_for(self, expression: str, timeout: float = 30, what: str = "") -> Any:
        """Poll a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.js(expression)
            except BrowserError:
                last = None  # the page is navigating
            if last:
                return last
            time.sleep(0.3)
        raise BrowserError(f"waited {timeout:.0f}s for {what or expression}; page at {self.url()}")

    def url(self) -> str:
        try:
            return self.js("location.href")
        except BrowserError:
            return "?"

    def type_into(self, selector: str, text: str) -> None:
        """Focus an input and type, the way a person does (React sees real input events)."""
        self.js(f"document.querySelector({json.dumps(selector)}).focus()")
        self.send("Input.insertText", text=text)

    def click_text(self, text: str, selector: str = "button, a, [role=menuitem], [role=button]",
                   root: str = "document") -> None:
        """Click the first visible element under ``root`` matching ``selector`` whose text is ``text``."""
        found = self.js(f"""(() => {{
            const els = [...{root}.querySelectorAll({json.dumps(selector)})]
              .filter(e => e.textContent.trim() === {json.dumps(text)} && e.getClientRects().length);
            if (!els.length) return false;
            els[0].scrollIntoView(); els[0].click(); return true; }})()""")
        if not found:
            raise BrowserError(f"no visible {selector} with text {text!r} at {self.url()}")

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
