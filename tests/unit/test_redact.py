"""redact: every form of every secret is scrubbed from foreign text, and the text is bounded."""

from __future__ import annotations

import json
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from fluxq.config.redact import MAX_TEXT_CHARS, REDACTED, redact, secrets_of
from fluxq.config.settings import Settings

ODD_KEY = "bfl-key/with+odd=chars 123"
"""A key whose characters change under URL quoting and JSON escaping."""


@pytest.mark.parametrize(
    "form",
    [
        ODD_KEY,
        quote(ODD_KEY, safe=""),
        quote(ODD_KEY, safe="").lower(),
        quote(ODD_KEY),
        quote_plus(ODD_KEY),
        json.dumps(ODD_KEY)[1:-1],
    ],
)
def test_a_secret_and_its_obvious_transforms_are_redacted(form: str) -> None:
    text = f"detail: key {form!s} is not valid"
    out = redact(text, [SecretStr(ODD_KEY)])
    assert form not in out
    assert REDACTED in out
    assert out.startswith("detail: key ")


def test_a_secret_with_surrounding_whitespace_is_redacted_stripped_and_escaped() -> None:
    secret = "abcdefgh-1234\n"
    for echoed in ("abcdefgh-1234", "Illegal header value b'abcdefgh-1234\\n'", repr([secret])):
        out = redact(echoed, [secret])
        assert "abcdefgh-1234" not in out
        assert REDACTED in out


def test_none_and_empty_secrets_are_ignored_and_plain_strings_are_accepted() -> None:
    assert redact("nothing to hide", [None, "", SecretStr("")]) == "nothing to hide"
    assert redact("token=s3cr3t!", ["s3cr3t!"]) == f"token={REDACTED}"


def test_short_secrets_are_matched_only_verbatim() -> None:
    # A 4-character secret's quoted forms are too likely to occur by chance.
    assert redact("a b a+b", ["a b"]) == f"{REDACTED} a+b"


def test_every_occurrence_of_every_secret_is_redacted() -> None:
    text = "k1=AAAA-1111-xyz k2=BBBB-2222-xyz again AAAA-1111-xyz"
    out = redact(text, [SecretStr("AAAA-1111-xyz"), "BBBB-2222-xyz"])
    assert out == f"k1={REDACTED} k2={REDACTED} again {REDACTED}"


def test_the_text_is_bounded_and_a_secret_across_the_cut_leaves_no_prefix() -> None:
    secret = "0123456789abcdef"
    text = "x" * (MAX_TEXT_CHARS - 5) + secret + "y" * 10_000
    out = redact(text, [secret])
    assert len(out) <= MAX_TEXT_CHARS
    assert "01234" not in out
    assert len(redact("z" * 10_000, [])) <= MAX_TEXT_CHARS
    assert redact("short", [], max_chars=3) == "sh…"


def _plain_secret(secret: str) -> bool:
    # A secret that overlaps the marker could be re-formed from "[redacted]" and its neighbours.
    overlaps = (
        REDACTED in secret
        or secret in REDACTED
        or any(
            secret.startswith(REDACTED[i:]) or secret.endswith(REDACTED[:i])
            for i in range(1, len(REDACTED))
        )
    )
    return secret.strip() == secret and secret.isprintable() and not overlaps


@given(
    prefix=st.text(max_size=600),
    suffix=st.text(max_size=600),
    secret=st.text(min_size=8, max_size=40).filter(_plain_secret),
)
def test_an_embedded_secret_never_survives(prefix: str, suffix: str, secret: str) -> None:
    out = redact(prefix + secret + suffix, [SecretStr(secret)])
    assert secret not in out
    assert len(out) <= MAX_TEXT_CHARS


def test_secrets_of_finds_every_set_secret_field_of_settings() -> None:
    settings = Settings(
        bfl_api_key="key-abcdefgh",  # type: ignore[arg-type]
        webhook_secret="hook-abcdefgh",  # type: ignore[arg-type]
    )
    values = {s.get_secret_value() for s in secrets_of(settings)}
    assert values == {"key-abcdefgh", "hook-abcdefgh"}
    assert secrets_of(Settings(bfl_api_key=None, webhook_secret=None)) == ()
