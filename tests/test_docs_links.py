"""Every relative link in README.md and docs/ leads to a file that exists, and an anchor to a heading it has."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def slug(heading: str) -> str:
    """Return a heading's anchor as Python-Markdown's toc extension makes it (mkdocs' default)."""
    text = re.sub(r"[`*_]", "", heading).strip()
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def prose_lines(page: Path, keep_code: bool = False) -> list[tuple[int, str]]:
    """Return (line number, text) of the lines outside fenced code blocks, inline code removed unless kept."""
    out: list[tuple[int, str]] = []
    in_fence = False
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            out.append((number, line if keep_code else re.sub(r"`[^`]*`", "", line)))
    return out


def anchors(page: Path) -> set[str]:
    """Return the anchors of a page's headings."""
    return {slug(line.lstrip("#")) for _, line in prose_lines(page, keep_code=True) if re.match(r"^#{1,6} ", line)}


def links(page: Path) -> list[tuple[int, str]]:
    """Return (line number, target) of every link on a page that points inside the repository."""
    found = [(n, m.group(1)) for n, line in prose_lines(page) for m in LINK.finditer(line)]
    return [(n, t) for n, t in found if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]  # http:, mailto:, file: ...


def broken(page: Path, root: Path = ROOT) -> list[str]:
    """Return one line per link on the page that leads nowhere: `file:line: target: why`."""
    problems: list[str] = []
    for number, target in links(page):
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        where = f"{page.relative_to(root)}:{number}: {target}"
        if not dest.exists():
            problems.append(f"{where}: no file {dest.relative_to(root) if dest.is_relative_to(root) else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where}: {dest.name} has no heading with anchor #{anchor}")
    return problems


def test_the_link_checker_finds_broken_files_and_anchors(tmp_path: Path) -> None:
    """A made-up page: a good link passes, a missing file and a missing anchor are both named with their line."""
    (tmp_path / "b.md").write_text("# Title\n\n## HarMeme (`dataset=harmeme`)\n")
    page = tmp_path / "a.md"
    page.write_text(
        "[ok](b.md#harmeme-datasetharmeme) [web](https://x.org/y.md)\n"
        "```\n[in code](nowhere.md)\n```\n"
        "[gone](missing.md)\n[bad anchor](b.md#nope) `[inline](nowhere.md)`\n"
    )
    assert broken(page, root=tmp_path) == [
        "a.md:5: missing.md: no file missing.md",
        "a.md:6: b.md#nope: b.md has no heading with anchor #nope",
    ]


def test_slugs_match_the_site_anchors() -> None:
    """Headings with code, parentheses and punctuation give the anchors the built site uses."""
    assert slug("HarMeme (`dataset=harmeme`)") == "harmeme-datasetharmeme"
    assert slug("Several machines: server, clients, managers") == "several-machines-server-clients-managers"
    assert slug("`flwr run`") == "flwr-run"


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_resolves(page: Path) -> None:
    """Each README/docs link names a file in the checkout, and an anchor names one of that file's headings."""
    assert broken(page) == []


def test_the_readme_is_short_and_links_the_docs() -> None:
    """The README stays a front page (at most 260 lines) and links the docs pages people look for first."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 260
    targets = {t for _, t in links(ROOT / "README.md")}
    for page in ("docs/own-memes.md", "docs/deployment.md", "docs/security/index.md", "docs/configuration.md"):
        assert page in targets, f"README.md does not link {page}"


def home_page(readme: str) -> str:
    """Return the site's home page made from the README: links relative to docs/, the page list left to the nav."""
    text = readme.replace("](docs/", "](")
    text = re.sub(r"## Documentation\n.*?(?=## Working on the code)", "", text, flags=re.S)
    title = "# fedmemes: federated hateful-meme classification (text + image) on Flower"
    return text.replace(title, "# fedmemes\n\nFederated hateful-meme classification (text + image) on Flower.", 1)


def test_the_site_home_page_is_the_readme() -> None:
    """docs/index.md says what README.md says; after editing the README: `python tests/test_docs_links.py`."""
    expected = home_page((ROOT / "README.md").read_text(encoding="utf-8"))
    assert (ROOT / "docs" / "index.md").read_text(encoding="utf-8") == expected, "run python tests/test_docs_links.py"


if __name__ == "__main__":  # rewrite docs/index.md from README.md
    (ROOT / "docs" / "index.md").write_text(home_page((ROOT / "README.md").read_text(encoding="utf-8")))
