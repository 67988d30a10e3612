"""The design lives in the repository: every document a source file, test or doc names exists here, and
nothing cites the notes that stayed outside it (DESIGN.md, PAPER.md)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("zreward_deploy", "kernels", "export", "training", "bench", "tests", "docs")


def _texts():
    files = [
        ROOT / "README.md",
        *[p for f in FOLDERS for p in (ROOT / f).rglob("*") if p.suffix in (".py", ".md")],
    ]
    return [(p, p.read_text()) for p in files]


def test_no_citation_of_documents_outside_the_repository():
    this = Path(__file__).resolve()
    cited = [
        f"{p.relative_to(ROOT)}: {m.group(0)}"
        for p, text in _texts()
        if p != this
        for m in re.finditer(r"(?<![\w/])(DESIGN|PAPER)\.md", text)
    ]
    assert not cited, "\n".join(cited)


def test_every_named_doc_exists():
    missing = sorted(
        {
            f"{p.relative_to(ROOT)}: {name}"
            for p, text in _texts()
            for name in re.findall(r"\bdocs/[\w.-]+\.md", text)
            if not (ROOT / name).is_file()
        }
    )
    assert not missing, "\n".join(missing)
    assert (ROOT / "docs" / "design.md").is_file() and (ROOT / "docs" / "method.md").is_file()
