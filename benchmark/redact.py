"""Hide credentials in URIs before they are printed, raised or logged.

`redact(text)` finds every URI inside a piece of text (a bare tracking URI, a start line, an exception's
message) and replaces

- the password of its user information: `postgresql://mlflow:s3cret@db/mlflow` -> `postgresql://mlflow:***@db/mlflow`;
- the value of query parameters that carry secrets (`password`, `token`, `secret`, pre-signed S3/GCS
  signatures and credentials, Azure SAS `sig`, ...): `?X-Amz-Signature=abc&x=1` -> `?X-Amz-Signature=***&x=1`.

Everything else (scheme, user name, host, port, path, other parameters, the surrounding text) is left as
it was, and redacting twice gives the same text. A user name alone (`https://user@host`) is kept: it names
an account, it does not open it.
"""

from __future__ import annotations

import re

MASK = "***"

# Query parameters whose value is a secret, compared case-insensitively.
SECRET_PARAMS = frozenset({
    "password", "passwd", "pwd", "pass", "sslpassword",
    "secret", "client_secret", "secret_key", "secret_access_key", "aws_secret_access_key",
    "token", "access_token", "refresh_token", "id_token", "auth_token", "session_token", "security_token",
    "api_key", "apikey", "api-key", "access_key", "private_key",
    "signature", "sig",
    "x-amz-signature", "x-amz-credential", "x-amz-security-token",
    "x-goog-signature", "x-goog-credential",
    "awsaccesskeyid",
})

# scheme://user:password@host: the password runs to the last "@" of the authority (a raw "@" inside a
# password is a common mistake, and the part before the last "@" is then still secret), never over "/",
# "?", "#" or white space.
_USERINFO = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@\[\]]*:)"  # scheme:// and the user name, with its ":"
    r"(?P<password>[^\s/?#]*)"                                   # the password (greedy: to the last "@")
    r"(?=@[^\s/?#@]*(?:[\s/?#'\"<>),;]|$))",                     # followed by "@host" and the end of the authority
)

# ?name=value or &name=value (";" also separates parameters in some URIs; a fragment can carry
# parameters too, as in OAuth's #access_token=...).
_PARAM = re.compile(r"(?P<head>[?&;#](?P<name>[A-Za-z0-9_.\-]+)=)(?P<value>[^&;#\s'\"<>]*)")


def _mask_param(match: re.Match[str]) -> str:
    if match["name"].lower() in SECRET_PARAMS and match["value"]:
        return match["head"] + MASK
    return match[0]


def _mask_password(match: re.Match[str]) -> str:
    return match["head"] + MASK if match["password"] else match[0]


def _redact_uri(uri: str) -> str:
    uri = _USERINFO.sub(_mask_password, uri)
    return _PARAM.sub(_mask_param, uri) if "=" in uri else uri


# A URI inside text: scheme:// followed by anything up to white space or a closing quote/bracket.
_URI = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]*")


def redact(text: str) -> str:
    """`text` (a URI, or any text containing URIs) with the URIs' passwords and secret parameters masked."""
    if "://" not in text:
        return text
    return _URI.sub(lambda m: _redact_uri(m[0]), text)
