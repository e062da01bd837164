import hashlib
import hmac
import json

import pytest

from apps.whatsapp.signature import dumps_like_meta, sign_body, verify_signature

SECRET = "app-secret-1"
BODY = dumps_like_meta(
    {"object": "whatsapp_business_account", "entry": [{"id": "1", "text": "é😮"}]}
)
VALID = "sha256=" + hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()


def test_it_signs_like_meta():
    assert sign_body(BODY, SECRET) == VALID
    assert len(VALID) == len("sha256=") + 64
    assert VALID[7:] == VALID[7:].lower()


def test_it_accepts_the_exact_signature():
    assert verify_signature(BODY, VALID, SECRET)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "sha256",
        "sha256=",
        "sha256=" + "0" * 63,
        "sha256=" + "0" * 65,
        VALID[:-1],  # a prefix of the valid digest
        VALID + "0",
        VALID.upper(),
        "SHA256=" + VALID[7:],
        "sha256=" + VALID[7:].upper(),
        "sha256=" + "g" * 64,  # not hex
        "sha256=" + VALID[7:-2] + "zz",
        " " + VALID,
        VALID + " ",
        VALID + "\n",
        "sha256 =" + VALID[7:],
        "sha256:" + VALID[7:],
        VALID[7:],  # the digest without prefix
        "sha1=" + hmac.new(SECRET.encode(), BODY, hashlib.sha1).hexdigest(),
        "sha256=" + hmac.new(b"other-secret", BODY, hashlib.sha256).hexdigest(),
        "sha256=" + hmac.new(SECRET.encode(), BODY + b" ", hashlib.sha256).hexdigest(),
        "sha256=" + hashlib.sha256(BODY).hexdigest(),  # plain hash, no key
        f"{VALID},{VALID}",
    ],
)
def test_it_rejects_malformed_or_wrong_signatures(header):
    assert not verify_signature(BODY, header, SECRET)


def test_it_rejects_a_valid_signature_of_other_bytes():
    other = b'{"object":"whatsapp_business_account","entry":[]}'
    assert not verify_signature(other, VALID, SECRET)


def test_it_rejects_a_reserialised_body():
    reserialised = json.dumps(json.loads(BODY), ensure_ascii=False).encode()
    assert reserialised != BODY
    assert not verify_signature(reserialised, VALID, SECRET)
    # Even the same compact form without ASCII escapes differs once non-ASCII is involved.
    compact = json.dumps(json.loads(BODY), ensure_ascii=False, separators=(",", ":")).encode()
    assert not verify_signature(compact, VALID, SECRET)


def test_it_rejects_an_empty_app_secret():
    assert not verify_signature(BODY, sign_body(BODY, ""), "")


def test_it_refuses_to_sign_text():
    with pytest.raises(TypeError):
        sign_body(BODY.decode(), SECRET)  # type: ignore[arg-type]


def test_it_escapes_non_ascii_like_meta():
    assert dumps_like_meta({"name": "José"}) == b'{"name":"Jos\\u00e9"}'
    # Emoji outside the BMP become a lowercase UTF-16 surrogate pair.
    assert dumps_like_meta({"e": "😮"}) == b'{"e":"\\ud83d\\ude2e"}'
    assert dumps_like_meta({"e": "👍"}) == b'{"e":"\\ud83d\\udc4d"}'


def test_it_serialises_compactly_and_keeps_key_order():
    assert dumps_like_meta({"b": 1, "a": [1, 2], "c": {"x": None}}) == (
        b'{"b":1,"a":[1,2],"c":{"x":null}}'
    )


def test_it_keeps_slashes_unless_asked():
    assert dumps_like_meta({"u": "https://a/b"}) == b'{"u":"https://a/b"}'
    escaped = dumps_like_meta({"u": "https://a/b", "t": "a\\/b"}, escape_slashes=True)
    assert escaped == b'{"u":"https:\\/\\/a\\/b","t":"a\\\\\\/b"}'
    assert json.loads(escaped) == {"u": "https://a/b", "t": "a\\/b"}


def test_it_round_trips_through_verification():
    body = dumps_like_meta({"text": "Grüße 🙂 / ok"}, escape_slashes=True)
    assert verify_signature(body, sign_body(body, SECRET), SECRET)
