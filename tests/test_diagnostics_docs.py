"""docs/smtp.md documents every knowledge-base entry and every test stage.

The knowledge-base table and the enhanced status code registry tables in docs/smtp.md are
generated from the data (mailctl.knowledge.smtp.KNOWLEDGE, mailctl.knowledge.enhanced_status)
by this module; the test checks the page holds exactly what the data says. After changing an
entry, regenerate them: `python tests/test_diagnostics_docs.py`."""

from __future__ import annotations

import sys
from pathlib import Path

from mailctl.knowledge import enhanced_status as registry
from mailctl.knowledge.smtp import CLASS_FIXES, KNOWLEDGE, KnownFailure
from mailctl.diagnostics.probe import QUIT_AFTER_CHOICES

DOC = Path(__file__).resolve().parents[1] / "docs" / "smtp.md"
SECTIONS = ("knowledge-table", "knowledge-examples", "registry-tables")


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _codes(codes: tuple[int, ...]) -> str:
    if codes == tuple(range(400, 500)):
        return "4xx"
    if codes == tuple(range(500, 600)):
        return "5xx"
    return "/".join(str(c) for c in codes)


def matches(entry: KnownFailure) -> str:
    """What an entry matches on, in words: stage; reply; enhanced; text; exception; ..."""
    parts = []
    if entry.stages:
        parts.append("stage " + "/".join(entry.stages))
    if entry.codes:
        parts.append("reply " + _codes(entry.codes))
    if entry.enhanced:
        parts.append("enhanced " + "/".join(entry.enhanced))
    if entry.plain:
        parts.append("no enhanced code")
    if entry.pattern:
        parts.append(f"text /{entry.pattern}/")
    if entry.exceptions:
        parts.append("exception " + "/".join(entry.exceptions))
    if entry.verify_codes:
        parts.append("TLS verify code " + "/".join(str(c) for c in entry.verify_codes))
    if entry.failure_ids:
        parts.append("mailctl check")
    if entry.http_status:
        parts.append("HTTP " + "/".join(str(c) for c in entry.http_status))
    if entry.error_codes:
        parts.append("error code " + "/".join(entry.error_codes))
    return "; ".join(parts)


def knowledge_table() -> str:
    rows = ["| id | matches | exit | cause | fix |", "|---|---|---|---|---|"]
    for e in KNOWLEDGE:
        exit_ = str(int(e.exit_code)) if e.exit_code is not None else "class"
        rows.append(f"| `{e.id}` | {_cell(matches(e))} | {exit_} | {_cell(e.cause)} | {_cell(e.fix)} |")
    return "\n".join(rows)


def knowledge_examples() -> str:
    """Every server wording an entry is tested with, to find one's own error text."""
    rows = ["| id | stage | reply (scripted by tests/test_diagnostics_knowledge.py) |", "|---|---|---|"]
    for e in KNOWLEDGE:
        for stage, reply in ([e.example] if e.example else []) + list(e.also):
            rows.append(f"| `{e.id}` | {stage} | `{_cell(reply)}` |")
    return "\n".join(rows)


def registry_tables() -> str:
    out = ["| class | meaning |", "|---|---|"]
    out += [f"| {k}.X.X | {title}: {desc} |" for k, (title, desc) in registry.CLASSES.items()]
    out += ["", "| subject | meaning | fix when no entry knows the reply (5.Y.Z; 4.Y.Z: retry) |", "|---|---|---|"]
    for s, (title, desc) in registry.SUBJECTS.items():
        out.append(f"| X.{s}.X | {title}: {_cell(desc)} | {_cell(CLASS_FIXES.get((5, s), ''))} |")
    out += ["", "| code | registered meaning | reference |", "|---|---|---|"]
    out += [f"| X.{s}.{d} | {_cell(title)} | {ref} |" for (s, d), (title, ref) in registry.DETAILS.items()]
    return "\n".join(out)


GENERATORS = {"knowledge-table": knowledge_table, "knowledge-examples": knowledge_examples, "registry-tables": registry_tables}


def _markers(name: str) -> tuple[str, str]:
    return (f"<!-- generated: {name} (python tests/test_diagnostics_docs.py) -->", f"<!-- end generated: {name} -->")


def _section(text: str, name: str) -> tuple[int, int]:
    begin, end = _markers(name)
    i, j = text.find(begin), text.find(end)
    assert i >= 0 and j > i, f"docs/smtp.md lacks the markers {begin} ... {end}"
    return i + len(begin), j


def regenerate(text: str) -> str:
    for name in SECTIONS:
        i, j = _section(text, name)
        text = text[:i] + "\n" + GENERATORS[name]() + "\n" + text[j:]
    return text


def test_generated_tables_are_current():
    text = DOC.read_text()
    for name in SECTIONS:
        i, j = _section(text, name)
        assert text[i:j].strip() == GENERATORS[name]().strip(), (
            f"docs/smtp.md's {name} is not what the data says: run python tests/test_diagnostics_docs.py")


def test_every_knowledge_base_entry_is_documented():
    text = DOC.read_text()
    missing = [e.id for e in KNOWLEDGE if f"`{e.id}`" not in text]
    assert not missing, f"add these to docs/smtp.md: {missing}"


def test_every_registry_code_is_documented():
    text = DOC.read_text()
    missing = [f"X.{s}.{d}" for s, d in registry.DETAILS if f"| X.{s}.{d} |" not in text]
    assert not missing, missing


def test_matches_describes_every_criterion():
    """The generated 'matches' column must not silently drop a criterion an entry uses."""
    for e in KNOWLEDGE:
        words = [part.split(" ")[0] for part in matches(e).split("; ")]
        for used, word in ((e.stages, "stage"), (e.codes, "reply"), (e.enhanced, "enhanced"), (e.pattern, "text"),
                           (e.exceptions, "exception"), (e.verify_codes, "TLS"), (e.failure_ids, "mailctl")):
            assert bool(used) == (word in words), (e.id, word, words)


def test_every_stage_has_an_exit_code_row():
    text = DOC.read_text()
    for stage in QUIT_AFTER_CHOICES:
        assert stage in text


if __name__ == "__main__":
    DOC.write_text(regenerate(DOC.read_text()))
    print(f"regenerated {', '.join(SECTIONS)} in {DOC}", file=sys.stderr)
