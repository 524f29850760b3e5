"""The meme record, the data-issue record and the error that lists issues."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "dev_seen", "dev_unseen", "test_seen", "test_unseen")
HOLDOUT_SPLITS = tuple(s for s in SPLITS if s != "train")

# How many issues a DataError message spells out; the rest are only counted per kind.
_SHOWN_ISSUES = 20


@dataclass(frozen=True)
class Meme:
    """One meme: an image file, its caption and its label (1 = hateful)."""

    id: str
    img: Path
    text: str
    label: int
    # Availability: a source or a client's modality skew may mark a part unusable.
    has_text: bool = True
    has_image: bool = True
    # Extra scalar keys of the source row, e.g. (("client", "siteA"),) for partition=natural.
    meta: tuple[tuple[str, str], ...] = ()
    # Where the caption came from: "given" (the source's own) or "ocr" (read from the image, dataset.ocr).
    text_source: str = "given"


@dataclass(frozen=True)
class DataIssue:
    """One problem found in a dataset file, located by file and 1-based line (0: no line)."""

    file: str
    line: int
    kind: str
    detail: str

    def __str__(self) -> str:
        """Format as 'file:line: kind: detail', the form editors and terminals link to."""
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.kind}: {self.detail}"


def count_kinds(issues: list[DataIssue]) -> dict[str, int]:
    """Count issues per kind, most frequent first."""
    return dict(Counter(i.kind for i in issues).most_common())


class DataError(ValueError):
    """Raised with on_error='raise'; message lists the first 20 issues as file:line: reason, then a count per kind, then
    the fix (e.g. 'set dataset.on_error=skip to drop bad rows')."""

    def __init__(self, issues: list[DataIssue], fix: str | None = None) -> None:
        self.issues = list(issues)
        shown = [f"  {i}" for i in self.issues[:_SHOWN_ISSUES]]
        if len(self.issues) > _SHOWN_ISSUES:
            shown.append(f"  ... and {len(self.issues) - _SHOWN_ISSUES} more")
        counts = ", ".join(f"{k}={n}" for k, n in count_kinds(self.issues).items())
        fix = fix or (
            "fix the rows above, or set dataset.on_error=skip to drop bad rows (counted in the log "
            "and metrics.json), or keep_text / keep_image to keep a meme whose image / caption "
            "is bad with that part marked missing"
        )
        super().__init__(
            f"{len(self.issues)} data issue(s) found:\n" + "\n".join(shown) + f"\nissues per kind: {counts}\nfix: {fix}"
        )
