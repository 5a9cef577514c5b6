"""Screenshot the widest figure of every chapter as the rendered book shows it.

Opens each page of a built book (``jupyter-book build .``) in headless Chromium at a laptop's window width,
finds the figure that is widest on the page (the one whose labels shrink most), and saves a screenshot of it
alone, with its width on screen and its width in the PNG, so that the text in it can be read at the size a
reader sees it:

    pip install playwright                      # the Python driver; the browser is the system's Chromium
    python tools/figure_screenshots.py          # writes screenshots/figures/<page>.png, prints the widths

``--chromium PATH`` names the browser when it is not on the PATH as ``chromium``.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--html", type=Path, default=ROOT / "_build" / "html", help="the built book")
    parser.add_argument("--out", type=Path, default=ROOT / "screenshots" / "figures")
    parser.add_argument("--width", type=int, default=1280, help="browser window width (px)")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    args = parser.parse_args(argv)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sys.exit("error: needs the playwright package (pip install playwright)")
    if not args.chromium:
        sys.exit("error: no Chromium found: install it (apt-get install chromium) or pass --chromium PATH")
    pages = sorted((args.html / "book").glob("0*.html"))
    if not pages:
        sys.exit(f"error: no chapter pages under {args.html / 'book'}: build the book first (jupyter-book build .)")
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": args.width, "height": 900})
        for html in pages:
            page.goto(html.as_uri())
            images = page.query_selector_all("div.cell_output img, .output img")
            if not images:
                print(f"{html.stem}: no figure")
                continue
            sizes = [(img.evaluate("i => [i.naturalWidth, i.getBoundingClientRect().width]"), img)
                     for img in images]
            (natural, shown), widest = max(sizes, key=lambda s: s[0][0])
            widest.scroll_into_view_if_needed()
            target = args.out / f"{html.stem}.png"
            widest.screenshot(path=str(target))
            print(f"{html.stem}: widest figure {natural} px in its PNG, {shown:.0f} px on a {args.width} px "
                  f"window (scale {shown / natural:.2f}) -> {target.relative_to(ROOT)}")
        browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
