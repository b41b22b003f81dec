"""Hypothesis: field validation rules, and TOML round trips that keep a person's comments."""

from __future__ import annotations

import re
import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mailctl.errors import ExitCode, ValidationError
from mailctl.profiles.model import (
    FIELDS_BY_NAME,
    SECRET_KEYS,
    coerce_cli_value,
    validate_field,
    validate_name,
)
from mailctl.profiles.store import ProfileStore

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

NAME_CHARS = string.ascii_letters + string.digits + "_"
names = st.text(alphabet=NAME_CHARS, min_size=1, max_size=50)
# Text that survives UTF-8 (no lone surrogates).
any_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=300)
line_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=200)

HEADERISH = ("username", "from_address", "sender_name", "reply_to", "host", "ehlo_name", "secret_command",
             "client_id", "tenant_id", "proxy", "ews_url")


def rejects(field: str, value) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        validate_field(field, value)
    err = info.value
    assert err.exit_code == ExitCode.DATAERR
    assert err.field == field
    assert field in err.message
    return err


# --- ports -------------------------------------------------------------------------------------
@SETTINGS
@given(port=st.integers(1, 65535), field=st.sampled_from(["port", "alternate_port"]))
def test_valid_ports_accepted(port, field):
    assert validate_field(field, port) == port
    assert coerce_cli_value(field, str(port)) == port


@SETTINGS
@given(port=st.one_of(st.integers(max_value=0), st.integers(min_value=65536)))
def test_invalid_ports_rejected(port):
    err = rejects("port", port)
    assert "1-65535" in err.message
    with pytest.raises(ValidationError) as info:
        coerce_cli_value("port", str(port))
    assert "port" in info.value.message


@SETTINGS
@given(port=st.integers(min_value=65536) | st.integers(max_value=-1))
def test_alternate_port_rejects_out_of_range_but_allows_zero(port):
    assert validate_field("alternate_port", 0) == 0
    rejects("alternate_port", port)


@SETTINGS
@given(raw=st.text(max_size=10).filter(lambda s: not s.strip().lstrip("-").isdigit()))
def test_non_numeric_port_text_rejected(raw):
    with pytest.raises(ValidationError) as info:
        coerce_cli_value("port", raw)
    assert info.value.field == "port"


@pytest.mark.parametrize("value", [True, False, 1.5, "587", None, [587]])
def test_port_rejects_non_integers_in_file_values(value):
    if value == "587":
        assert validate_field("port", value) == 587  # digits text is normalised
        return
    rejects("port", value)


# --- names -------------------------------------------------------------------------------------
@SETTINGS
@given(name=names)
def test_valid_names_accepted(name):
    assert validate_name(name) == name


@SETTINGS
@given(name=st.text(max_size=60))
def test_names_follow_the_rule_exactly(name):
    valid = re.fullmatch(r"[A-Za-z0-9_]{1,50}", name, flags=re.ASCII) is not None
    if valid:
        assert validate_name(name) == name
    else:
        with pytest.raises(ValidationError) as info:
            validate_name(name)
        assert info.value.field == "name"
        assert "1-50 letters, digits or underscores" in info.value.message


@SETTINGS
@given(name=names, suffix=st.sampled_from(["\n", "\r\n", " ", "-", ".", "é"]))
def test_names_with_trailing_junk_rejected(name, suffix):
    assume(len(name) < 50)
    with pytest.raises(ValidationError):
        validate_name(name + suffix)


def test_name_length_boundary():
    assert validate_name("a" * 50)
    with pytest.raises(ValidationError):
        validate_name("a" * 51)
    with pytest.raises(ValidationError):
        validate_name("")


# --- lengths -------------------------------------------------------------------------------------
@SETTINGS
@given(data=st.data(), field_limit=st.sampled_from([("signature", 250), ("description", 1000)]))
def test_length_limits(data, field_limit):
    field, limit = field_limit
    ok_text = data.draw(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=limit))
    assert validate_field(field, ok_text) == ok_text
    too_long = ok_text + "x" * (limit + 1 - len(ok_text)) + data.draw(st.text(max_size=5))
    err = rejects(field, too_long)
    assert f"at most {limit} characters" in err.message


def test_length_boundaries_exact():
    assert validate_field("signature", "s" * 250)
    rejects("signature", "s" * 251)
    assert validate_field("description", "d" * 1000)
    rejects("description", "d" * 1001)


def test_signature_may_span_lines():
    assert validate_field("signature", "--\nAlice\nExample Ltd") == "--\nAlice\nExample Ltd"


# --- header-ish fields reject CR/LF ------------------------------------------------------------------
@SETTINGS
@given(field=st.sampled_from(HEADERISH), before=line_text, after=line_text, br=st.sampled_from(["\r", "\n", "\r\n"]))
def test_headerish_fields_reject_line_breaks(field, before, after, br):
    err = rejects(field, before + br + after)
    if before + after and len(before + br + after) <= 200:
        # Short values fail on the line-break rule itself (long ones may hit a length rule first).
        assert "line breaks" in err.message or field in ("proxy", "ews_url")


@SETTINGS
@given(local=st.text(alphabet=string.ascii_letters + string.digits + "._+-", min_size=1, max_size=30),
       labels=st.lists(st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=20),
                       min_size=1, max_size=4))
def test_plain_addresses_accepted(local, labels):
    address = f"{local}@{'.'.join(labels)}"
    assert validate_field("from_address", address) == address
    assert validate_field("reply_to", address) == address


@SETTINGS
@given(text=line_text.filter(lambda s: "@" not in s and s != ""))
def test_addresses_need_an_at(text):
    rejects("from_address", text)


@pytest.mark.parametrize("field", SECRET_KEYS)
def test_secret_keys_are_refused_as_fields(field):
    with pytest.raises(ValidationError) as info:
        validate_field(field, "hunter2")
    assert "hunter2" not in info.value.message
    assert "secret" in info.value.message


@SETTINGS
@given(key=st.text(alphabet=string.ascii_lowercase + "_", min_size=1, max_size=20))
def test_unknown_fields_rejected(key):
    assume(key not in FIELDS_BY_NAME)
    with pytest.raises(ValidationError) as info:
        validate_field(key, "x")
    assert info.value.field == key


@SETTINGS
@given(choice=st.text(max_size=20))
def test_security_choices(choice):
    if choice in ("none", "starttls", "tls"):
        assert validate_field("security", choice) == choice
    else:
        rejects("security", choice)


# --- TOML round trips that keep comments ---------------------------------------------------------------
hosts = st.lists(st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=12),
                 min_size=1, max_size=4).map(".".join)

profile_values = st.fixed_dictionaries(
    {"host": hosts},
    optional={
        "port": st.integers(1, 65535),
        "security": st.sampled_from(["none", "starttls", "tls"]),
        "sender_name": line_text,
        "signature": st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=250),
        "description": st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=400),
        "tls_verify": st.booleans(),
        "timeout": st.integers(1, 600) | st.floats(0.5, 600, allow_nan=False, allow_infinity=False),
        "scopes": st.lists(st.text(alphabet=string.ascii_letters + "./:", min_size=1, max_size=20), max_size=3),
        "username": line_text,
    },
)

HAND_WRITTEN = """\
# Written by a person: keep this line.
schema_version = 1

[profiles.base]   # the company relay
host = "relay.example.com"  # trailing comment
# a comment between keys
port = 2525
"""


@SETTINGS
@given(profiles=st.dictionaries(names, profile_values, min_size=1, max_size=4))
def test_round_trip_add_keeps_comments_and_values(profiles):
    assume("base" not in profiles)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "profiles.toml"
        path.write_text(HAND_WRITTEN, encoding="utf-8")
        store = ProfileStore(path)
        with store.edit() as doc:
            for name, values in profiles.items():
                doc.add_profile(name, values)
        text = path.read_text(encoding="utf-8")
        assert text.startswith(HAND_WRITTEN)
        doc = store.load()
        assert doc.profile_names() == ["base", *profiles]
        for name, values in profiles.items():
            assert doc.raw_profile(name) == values
        assert doc.raw_profile("base") == {"host": "relay.example.com", "port": 2525}


@SETTINGS
@given(values=profile_values)
def test_round_trip_edit_keeps_comments_and_values(values):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "profiles.toml"
        path.write_text(HAND_WRITTEN, encoding="utf-8")
        store = ProfileStore(path)
        with store.edit() as doc:
            doc.set_fields("base", values)
        text = path.read_text(encoding="utf-8")
        for comment in ("# Written by a person: keep this line.", "# the company relay", "# a comment between keys"):
            assert comment in text
        expected = {"host": "relay.example.com", "port": 2525, **values}
        assert store.load().raw_profile("base") == expected
        # And back: unsetting what was added restores the original text.
        with store.edit() as doc:
            added = [k for k in values if k not in ("host", "port")]
            doc.unset_fields("base", added)
            doc.set_fields("base", {"host": "relay.example.com", "port": 2525})
        assert store.load().raw_profile("base") == {"host": "relay.example.com", "port": 2525}
        assert "# a comment between keys" in path.read_text(encoding="utf-8")


@SETTINGS
@given(values=profile_values, name=names)
def test_round_trip_through_cli_values(values, name):
    """Values typed on the command line (text) come back with the field's type."""
    for key, value in values.items():
        if key in ("scopes", "tls_verify"):
            continue
        raw = str(value)
        assert coerce_cli_value(key, raw) == (value if not isinstance(value, float) else float(raw))


@SETTINGS
@given(field=st.sampled_from(["proxy", "ews_url", "graph_endpoint", "authority", "token_url", "redirect_uri"]),
       scheme=st.sampled_from(["http", "https", "socks5", "ftp"]),
       user=st.text(alphabet=string.ascii_letters, max_size=8),
       password=st.text(alphabet=string.ascii_letters + string.digits, min_size=3, max_size=20).map("Zq9".__add__))
def test_urls_with_a_password_are_refused_without_echoing_it(field, scheme, user, password):
    err = rejects(field, f"{scheme}://{user}:{password}@proxy.example.com:8080/path")
    assert password not in err.message and password not in (err.hint or "")


def test_url_with_user_only_is_allowed():
    assert validate_field("proxy", "socks5://alice@proxy.example.com:1080") == "socks5://alice@proxy.example.com:1080"
