"""Checks of a rendered report folder shared by the report tests: links, images, the kept-expert map."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

from PIL import Image

from moe2dense_platform.reporting.render import DATA_FILE, INDEX


class Links(HTMLParser):
    """Every `src` and `href` of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name == "src" and value is not None:
                self.images.append(value)
            elif name == "href" and value is not None:
                self.links.append(value)


def check_report_folder(folder: Path) -> dict:
    """Assert the page links only files of the folder (relative, present), shows every PNG, and each
    PNG is a valid image of the size and sha256 report.json records; returns report.json."""
    page = Links()
    page.feed((folder / INDEX).read_text(encoding="utf-8"))
    for target in page.images + page.links:
        parsed = urlparse(target)
        assert not parsed.scheme and not parsed.netloc and not target.startswith("/"), target
        assert (folder / parsed.path).is_file(), f"broken link {target}"
    assert DATA_FILE in page.links
    assert sorted(page.images) == sorted(p.name for p in folder.glob("*.png"))
    document = json.loads((folder / DATA_FILE).read_text(encoding="utf-8"))
    assert sorted(f["file"] for f in document["figures"]) == sorted(page.images)
    for figure in document["figures"]:
        with Image.open(folder / figure["file"]) as image:
            image.verify()
        with Image.open(folder / figure["file"]) as image:
            assert image.format == "PNG" and image.size == (figure["width_px"], figure["height_px"])
    return document


def figure(document: dict, file: str) -> dict:
    (found,) = [f for f in document["figures"] if f["file"] == file]
    return found


def kept_and_groups(matrix: list[list[int]]) -> tuple[list[list[int]], list[dict[int, int]]]:
    """Per layer row of a kept-expert map: the kept experts, and {expert: group id}."""
    kept = [[e for e, cell in enumerate(row) if cell] for row in matrix]
    groups = [{e: cell - 1 for e, cell in enumerate(row) if cell} for row in matrix]
    return kept, groups
