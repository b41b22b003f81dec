"""The man pages in man/ are current, well-formed roff that man(1) renders, say what --help says
for every command and option, and a wheel installs them (share/man/man1) together with
profiles.example.toml and the completion scripts."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "man"


def _gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    return _gen_docs().man_pages()


@pytest.fixture(scope="module")
def tree():
    import typer.main

    from mailctl.cli import app
    from mailctl.commands.reference import command_tree

    return command_tree(typer.main.get_command(app))


def _text(roff: str) -> str:
    """Roff source back to words, to compare with help text."""
    return re.sub(r"\\f[BIR]|\\&", "", roff).replace("\\-", "-").replace("\\e", "\\")


def test_man_pages_on_disk_are_the_generated_ones(pages):
    assert sorted(p.name for p in MAN.glob("*.1")) == sorted(pages)
    for name, text in pages.items():
        assert (MAN / name).read_text(encoding="utf-8") == text, f"man/{name} is stale: run python scripts/gen_docs.py"


def test_one_page_per_top_level_command_with_every_subcommand_and_option(pages, tree):
    top = [c for c in tree if len(c.path) == 1]
    assert set(pages) == {"mailctl.1"} | {f"mailctl-{c.path[0]}.1" for c in top}
    root = _text(pages["mailctl.1"])
    for c in top:
        assert f"mailctl-{c.path[0]}(1)" in root
        assert f".B {c.path[0]}\n{c.help}" in root, c.path  # the same first sentence as --help lists
    for c in tree:
        if not c.path:
            continue
        page = _text(pages[f"mailctl-{c.path[0]}.1"])
        if not c.subcommands and len(c.path) > 1:
            assert f'.SS "mailctl {c.key} ' in page, c.key
        for option in c.options:
            assert any(n in page for n in option.names), f"{c.key}: {option.names} missing from its man page"


def test_pages_are_well_formed_roff(pages):
    for name, text in pages.items():
        lines = text.splitlines()
        assert lines[0].startswith(f".TH {name[:-2].upper().replace('-', chr(92) + '-')} 1 "), name
        for section in (".SH NAME", ".SH SYNOPSIS", ".SH DESCRIPTION", ".SH SEE ALSO"):
            assert section in lines, f"{name} lacks {section}"
        name_line = lines[lines.index(".SH NAME") + 1]
        assert re.fullmatch(r"mailctl(\\-[a-z]+)? \\- \S.*", name_line), name_line  # whatis/apropos read this
        requests = {line.split()[0] for line in lines if line.startswith((".", "'"))}
        assert requests <= {".TH", ".SH", ".SS", ".TP", ".PP", ".B", ".nf", ".fi", '.\\"'}, f"{name}: text read as a request"
    sendmail = _text(pages["mailctl-sendmail.1"])
    for option in ("-t", "-i, -oi", "-f, -r ADDR", "-F NAME", "-odq", "--help"):
        assert f".B {option}\n" in sendmail
    main = _text(pages["mailctl.1"])
    from mailctl.errors import EXIT_CODE_MEANINGS

    for code, meaning in EXIT_CODE_MEANINGS.items():
        assert f".B {int(code)}\n{meaning}" in main
    assert "/etc/mailctl/profiles.toml" in main and "MAILCTL_SYSTEM_CONFIG" in main


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_groff_formats_every_page_without_warnings():
    for page in sorted(MAN.glob("*.1")):
        proc = subprocess.run(["groff", "-man", "-ww", "-z", str(page)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and not proc.stderr, f"{page.name}: {proc.stderr}"


@pytest.mark.skipif(shutil.which("man") is None, reason="man is not installed")
def test_man_renders_the_pages():
    env = dict(os.environ, MANWIDTH="100", MAN_KEEP_FORMATTING="0", MANPAGER="cat", PAGER="cat", LC_ALL="C.UTF-8")
    out = subprocess.run(["man", "-l", str(MAN / "mailctl-queue.1")], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = re.sub(r".\x08", "", out.stdout)
    assert text.lstrip().startswith("MAILCTL-QUEUE(1)")
    assert "mailctl queue hold [OPTIONS]" in text
    assert "Keep queued/deferred messages from being sent until released (e.g. across maintenance)." in " ".join(text.split())
    assert "--outbox PATH" in text  # a real minus sign, as typed
    root = subprocess.run(["man", "-l", str(MAN / "mailctl.1")], env=env, capture_output=True, text=True, timeout=60)
    assert "EXIT STATUS" in re.sub(r".\x08", "", root.stdout)


def _can_build_wheels() -> bool:
    import setuptools

    major = int(setuptools.__version__.split(".")[0])
    return major >= 71 or importlib.util.find_spec("wheel") is not None


@pytest.mark.skipif(not _can_build_wheels(), reason="setuptools needs the wheel package to build wheels here")
def test_wheel_installs_man_pages_example_profiles_and_completions(tmp_path):
    src = tmp_path / "src-copy"  # build from a copy: the build leaves build/ and egg-info behind
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "profiles.example.toml"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("src", "man", "completions"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    out = tmp_path / "dist"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", "-w", str(out), str(src)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = out.glob("mailctl-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        data = f"mailctl-{wheel.name.split('-')[1]}.data/data/"
        for page in MAN.glob("*.1"):
            member = data + "share/man/man1/" + page.name
            assert member in names, member
            assert zf.read(member).decode() == page.read_text()
        assert zf.read(data + "share/doc/mailctl/profiles.example.toml").decode() == (ROOT / "profiles.example.toml").read_text()
        for where, shipped in (("share/bash-completion/completions/mailctl.bash", "mailctl.bash"),
                               ("share/zsh/site-functions/_mailctl", "_mailctl"),
                               ("share/fish/vendor_completions.d/mailctl.fish", "mailctl.fish")):
            assert zf.read(data + where).decode() == (ROOT / "completions" / shipped).read_text()
        assert "mailctl/commands/shellscripts.py" in names


def test_a_new_profiles_file_points_to_the_installed_example():
    from mailctl.profiles.store import NEW_FILE_HEADER

    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"share/doc/mailctl" = ["profiles.example.toml"]' in pyproject
    assert "profiles.example.toml, installed in share/doc/mailctl/" in NEW_FILE_HEADER
