"""Which directory a report may write into, and which of its files a new render may replace.

A report writes only into a directory that is new, empty, or its own: one holding the marker file MARKER that
an earlier render left, with the names of the files it wrote. A re-render deletes exactly those files, never
one it did not write. The default RESULTS_DIR/report is the tool's own even without a marker (an older
version made it); there, files are overwritten by name and nothing else is deleted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

MARKER = ".moe-bench-report"


class ReportDirError(ValueError):
    """An output directory the report may not write into; the message is one line."""


def claim(out: Path, default: bool) -> None:
    """Make `out` ready for a render: create it, or delete the files the last render there wrote.

    Raises ReportDirError for a file in the way, or a non-empty directory the tool does not own.
    """
    if out.exists() and not out.is_dir():
        raise ReportDirError(f"expected --out to be a directory, got {out}: a file")
    marker = out / MARKER
    if not marker.is_file():
        if out.is_dir() and any(out.iterdir()) and not default:
            raise ReportDirError(
                f"expected --out to be a new or empty directory, or one an earlier report wrote, got {out}: it holds "
                f"files and no {MARKER} marker; choose another directory"
            )
        out.mkdir(parents=True, exist_ok=True)
        return
    for name in _written(marker):
        if (out / name).is_file():
            (out / name).unlink()


def record(out: Path, written: Iterable[Path]) -> None:
    """Write the marker with the names of the files this render wrote into `out`."""
    names = sorted({p.name for p in written if p.parent.resolve() == out.resolve()})
    (out / MARKER).write_text(json.dumps({"written_by": "moe-bench report", "files": names}, indent=1) + "\n")


def _written(marker: Path) -> list[str]:
    """File names the marker lists: plain names inside the directory only, so a marker cannot point elsewhere."""
    try:
        files = json.loads(marker.read_text()).get("files", [])
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return []
    names = [f for f in files if isinstance(f, str)]
    return [f for f in names if f and f == Path(f).name and f not in (".", "..", MARKER)]
