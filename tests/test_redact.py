"""benchmark.redact: passwords and secret query parameters of URIs are masked, nothing else changes."""

from __future__ import annotations

import pytest

from benchmark.redact import MASK, redact


@pytest.mark.parametrize(("uri", "expected"), [
    ("postgresql://mlflow:s3cret@db.internal:5432/mlflow", "postgresql://mlflow:***@db.internal:5432/mlflow"),
    ("postgresql+psycopg2://mlflow:s3cret@db/mlflow", "postgresql+psycopg2://mlflow:***@db/mlflow"),
    ("http://alice:pa55word@tracking.example.org:5000", "http://alice:***@tracking.example.org:5000"),
    ("https://alice:pa55word@tracking.example.org/", "https://alice:***@tracking.example.org/"),
    ("mysql+pymysql://root:x%40y@127.0.0.1/mlflow", "mysql+pymysql://root:***@127.0.0.1/mlflow"),
    # a raw "@" or ":" inside the password: everything up to the host's "@" is hidden
    ("postgresql://u:p@ss:w@rd@db/x", "postgresql://u:***@db/x"),
    ("http://u:secret@[::1]:5000/api", "http://u:***@[::1]:5000/api"),
    ("http://:onlypassword@host", "http://:***@host"),
    ("s3://bucket/run1?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20260101&X-Amz-Signature=abcdef0123",
     "s3://bucket/run1?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***&X-Amz-Signature=***"),
    ("https://bucket.s3.amazonaws.com/k?x-amz-security-token=FwoG&X-Amz-Expires=3600",
     "https://bucket.s3.amazonaws.com/k?x-amz-security-token=***&X-Amz-Expires=3600"),
    ("https://acct.blob.core.windows.net/c/b?sv=2022-11-02&sig=Zm9v%2Bbar&se=2026", "https://acct.blob.core.windows.net/c/b?sv=2022-11-02&sig=***&se=2026"),
    ("postgresql://db/mlflow?user=mlflow&password=s3cret&sslmode=require", "postgresql://db/mlflow?user=mlflow&password=***&sslmode=require"),
    ("http://host:5000/?token=abc#frag", "http://host:5000/?token=***#frag"),
    ("https://app.example/cb#access_token=abc&state=1", "https://app.example/cb#access_token=***&state=1"),
    ("http://h/p?Secret=x;Password=y", "http://h/p?Secret=***;Password=***"),
    ("postgresql://u:pw@db/x?password=pw2", "postgresql://u:***@db/x?password=***"),
])
def test_uris_lose_their_secrets_and_keep_the_rest(uri: str, expected: str) -> None:
    assert redact(uri) == expected
    assert redact(expected) == expected  # idempotent


@pytest.mark.parametrize("harmless", [
    "sqlite:////home/me/results/mlflow.db",
    "sqlite:///results/mlflow.db",
    "http://127.0.0.1:5000",
    "http://tracking.example.org:5000/path@v2",        # an "@" in the path is not user information
    "https://alice@tracking.example.org",              # a user name alone is not a secret
    "s3://segleak/run1",
    "s3://bucket/k?X-Amz-Expires=3600&versionId=3",    # parameters that are not secrets
    "http://h/p?tokens_used=5&keyword=x&passport=1",   # names that only contain a secret word
    "file:///tmp/a:b@c",                               # no authority: nothing to hide
    "databricks://profile:prefix",
    "plain text with password=hunter2 but no URI",     # only URIs are parsed
    "",
])
def test_text_without_secrets_is_unchanged(harmless: str) -> None:
    assert redact(harmless) == harmless


def test_uris_inside_text_messages_and_quotes() -> None:
    text = ("segleak benchmark: results s3://segleak/run1, tracking postgresql://mlflow:hunter2@db:5432/mlflow "
            "(could not connect to 'http://bob:b0b@tracking:5000/api/2.0?token=t0k'); see http://127.0.0.1:5000.")
    assert redact(text) == ("segleak benchmark: results s3://segleak/run1, tracking postgresql://mlflow:***@db:5432/mlflow "
                            "(could not connect to 'http://bob:***@tracking:5000/api/2.0?token=***'); see http://127.0.0.1:5000.")
    multi = "a=http://u:one@h1 b=\"https://v:two@h2/x\"\nc=<ftp://w:three@h3>"
    out = redact(multi)
    assert out == "a=http://u:***@h1 b=\"https://v:***@h2/x\"\nc=<ftp://w:***@h3>"
    for secret in ("one", "two", "three", "hunter2", "b0b", "t0k"):
        assert secret not in out + redact(text)


def test_empty_password_and_value_are_left_alone() -> None:
    assert redact("http://user:@host/") == "http://user:@host/"
    assert redact("http://host/?token=&a=1") == "http://host/?token=&a=1"


def test_mask_is_the_documented_marker() -> None:
    assert MASK == "***"
    assert redact("redis://:p@cache:6379/0") == "redis://:***@cache:6379/0"
