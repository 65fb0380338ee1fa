"""The shipped docs are self-contained: no citation of a design file users never get, and
every docs/*.md file and protocol section that the code and docs point to exists."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = [p for d in ("ckmbench", "plugins", "docs") for p in (ROOT / d).rglob("*")
           if p.suffix in (".py", ".md", ".tmpl")] + [ROOT / "README.md"]


def test_no_citation_of_the_internal_design_file():
    cited = [f"{p.relative_to(ROOT)}:{i}" for p in SHIPPED
             for i, line in enumerate(p.read_text("utf-8").splitlines(), 1) if re.search(r"\bDESIGN\b", line)]
    assert cited == []


def test_doc_pointers_resolve():
    sections = {int(m) for m in re.findall(r"^## (\d+)\.", (ROOT / "docs" / "protocol.md").read_text("utf-8"), re.M)}
    for p in SHIPPED:
        text = p.read_text("utf-8")
        for name in re.findall(r"docs/([\w-]+\.md)", text):
            assert (ROOT / "docs" / name).is_file(), f"{p.relative_to(ROOT)} points to missing docs/{name}"
        for number in re.findall(r"protocol(?:\.md|\]\(protocol\.md\))? §(\d+)", text):
            assert int(number) in sections, f"{p.relative_to(ROOT)} points to protocol §{number}, which does not exist"


def test_every_environment_variable_the_code_reads_is_in_the_readme_table():
    code = [p for d in ("ckmbench", "plugins") for p in (ROOT / d).rglob("*.py")]
    used = {name for p in code for name in re.findall(r"\b(CKMBENCH_[A-Z0-9_]+)", p.read_text("utf-8"))}
    readme = (ROOT / "README.md").read_text("utf-8")
    table = readme[readme.index("### Environment variables"):]
    table = table[: table.index("\n\n", table.index("| variable"))]
    assert used and sorted(used - set(re.findall(r"`(CKMBENCH_[A-Z0-9_]+)`", table))) == []
