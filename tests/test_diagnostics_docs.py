"""docs/smtp.md documents every knowledge-base entry and every test stage."""

from pathlib import Path

from mailctl.knowledge.smtp import KNOWLEDGE
from mailctl.diagnostics.probe import QUIT_AFTER_CHOICES

DOC = Path(__file__).resolve().parents[1] / "docs" / "smtp.md"


def test_every_knowledge_base_entry_is_documented():
    text = DOC.read_text()
    missing = [e.id for e in KNOWLEDGE if f"`{e.id}`" not in text]
    assert not missing, f"add these to docs/smtp.md: {missing}"


def test_every_stage_has_an_exit_code_row():
    text = DOC.read_text()
    for stage in QUIT_AFTER_CHOICES:
        assert stage in text
