"""Open the built documentation in headless Chromium, save screenshots, check the math.

    sphinx-build -W docs docs/_build && python scripts/check_docs.py [--site docs/_build]

For each page (the index, the ``VAE`` API page, the models page with the formulas of the
priors and likelihoods, the results page and a prior's API page) Chromium renders the
file offline, a PNG screenshot is saved to ``--out`` (default ``SITE/screenshots``), and
the rendered DOM is checked: MathJax must have typeset every formula (rendered math
present, no raw TeX such as ``\\mathcal`` left in the visible text).
Exits with status 1 naming the page otherwise.
"""

import argparse
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

#: Page, and whether it must hold typeset math.
PAGES = {
    "index.html": False,
    "generated/pyro_vae.VAE.html": True,
    "guide/models.html": True,
    "results/index.html": False,
    "generated/pyro_vae.VampPrior.html": True,
}
#: TeX that MathJax leaves in the text when it did not run.
RAW_TEX = re.compile(r"\\(mathcal|mathbb|frac|log|sum|prod|int|mid|left|right|\(|\[)")
#: Markers of math that MathJax 2 typeset (CommonHTML output).
TYPESET = ("MathJax_CHTML", "mjx-chtml")


class VisibleText(HTMLParser):
    """The text a reader sees: everything outside <script>, <style> and <noscript>."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.hidden += tag in ("script", "style", "noscript")

    def handle_endtag(self, tag: str) -> None:
        self.hidden -= tag in ("script", "style", "noscript")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data)


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    sys.exit("no Chromium found: apt-get install chromium")


def render(browser: str, page: Path, *args: str) -> subprocess.CompletedProcess:
    """Chromium on ``page`` with MathJax given 15 s of virtual time to typeset."""
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu"]
    command += ["--virtual-time-budget=15000", "--window-size=1280,1400", *args]
    return subprocess.run(
        [*command, page.resolve().as_uri()], capture_output=True, text=True, timeout=120
    )


def check_page(browser: str, site: Path, name: str, math: bool, out: Path) -> list[str]:
    """Screenshot ``name`` to ``out`` and return what is wrong with its rendering."""
    page = site / name
    if not page.is_file():
        return [f"{page} does not exist; build the site first"]
    shot = out / (name.replace("/", "_").removesuffix(".html") + ".png")
    render(browser, page, f"--screenshot={shot}")
    dom = render(browser, page, "--dump-dom").stdout
    text = VisibleText()
    text.feed(dom)
    visible = " ".join(text.parts)
    problems = [] if shot.is_file() else [f"{name}: no screenshot written"]
    if raw := RAW_TEX.search(visible):
        problems.append(f"{name}: raw TeX {raw.group(0)!r} left in the rendered text")
    if math and not any(marker in dom for marker in TYPESET):
        problems.append(f"{name}: no typeset math (did MathJax load from _static/mathjax?)")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, default=Path("docs/_build"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or args.site / "screenshots"
    out.mkdir(parents=True, exist_ok=True)
    browser = chromium()
    problems = []
    for name, math in PAGES.items():
        found = check_page(browser, args.site, name, math, out)
        print(f"{name}: {'ok' if not found else 'FAILED'}")
        problems += found
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"screenshots in {out}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
