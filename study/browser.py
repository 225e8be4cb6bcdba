"""Headless Chromium as a reviewer's browser: what a page shows once its scripts ran (the DOM),
what it looks like (a screenshot), and whether its tables fit the window.

One Chromium process per call, with a fresh profile and no background networking (this
project's machines reach no outside host; Chromium's own connections would be refused).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars")
WIDTHS_ID = "ganstudy-table-widths"
# Run after layout: each table's width beside the width its box shows without scrolling.
MEASURE = f"""<script>
window.addEventListener("load", () => {{
  const page = document.documentElement.clientWidth;
  const rows = [...document.querySelectorAll("table")].map((t, i) => {{
    let box = t.parentElement;
    while (box && box !== document.body && box.scrollWidth <= box.clientWidth + 1) {{
      box = box.parentElement;
    }}
    const visible = box && box !== document.body ? box.clientWidth : page;
    return {{index: i, width: Math.ceil(t.getBoundingClientRect().width),
             visible: Math.min(visible, page), page: page,
             header: [...t.querySelectorAll("thead th")].map(th => th.textContent.trim())}};
  }});
  const out = document.createElement("pre");
  out.id = "{WIDTHS_ID}";
  out.textContent = JSON.stringify(rows);
  document.body.appendChild(out);
}});
</script>"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _run(url: str, width: int, height: int, extra: list[str], timeout_s: float,
         budget_ms: int) -> subprocess.CompletedProcess:
    browser = chromium()
    if browser is None:
        raise FileNotFoundError("chromium: not installed (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="ganstudy-chromium-") as profile:
        return subprocess.run(
            [browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
             f"--virtual-time-budget={budget_ms}", *extra, url],
            capture_output=True, text=True, timeout=timeout_s)


def page_dom(url: str, width: int = 1400, height: int = 1000, budget_ms: int = 20_000,
             timeout_s: float = 180) -> str:
    """The page's DOM after its scripts ran for budget_ms of virtual time."""
    return _run(url, width, height, ["--dump-dom"], timeout_s, budget_ms).stdout


def screenshot(url: str, out: Path, width: int = 1400, height: int = 1000,
               budget_ms: int = 20_000, timeout_s: float = 180,
               hosts: dict[str, str] | None = None) -> Path:
    """A PNG of the page's first width x height pixels. `hosts` maps host names to addresses
    for this browser alone."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    rules = [f"--host-resolver-rules={', '.join(f'MAP {k} {v}' for k, v in hosts.items())}"
             ] if hosts else []
    _run(url, width, height, [*rules, f"--screenshot={out}"], timeout_s, budget_ms)
    if not out.exists():
        raise RuntimeError(f"chromium wrote no screenshot of {url}")
    return out


def table_widths(html: Path, width: int = 1400) -> list[dict]:
    """Each table of an HTML file laid out in a window `width` px wide: its width, the width
    its box shows without scrolling, and its header cells."""
    text = Path(html).read_text()
    measured = re.sub(r"</body>", MEASURE + "</body>", text, count=1, flags=re.IGNORECASE)
    with tempfile.TemporaryDirectory(prefix="ganstudy-measure-") as folder:
        copy = Path(folder) / "page.html"
        copy.write_text(measured)
        dom = page_dom(copy.as_uri(), width=width, budget_ms=5000)
    found = re.search(rf'<pre id="{WIDTHS_ID}">(.*?)</pre>', dom, flags=re.DOTALL)
    if not found:
        raise RuntimeError(f"{html}: chromium ran no measuring script")
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&")
                      .replace("&lt;", "<").replace("&gt;", ">"))
