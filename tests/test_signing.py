"""scorebox/signing.py alone: keys, signatures and what verify() refuses, without a database."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from scorebox.errors import TrustError
from scorebox.signing import (
    FileEntry,
    TrustedKeys,
    create_key,
    key_id,
    load_key,
    public_line,
    sign,
    verify,
)

TAG = "model:v1"
FILES = {"model.yaml": FileEntry(hashlib.sha256(b"x").hexdigest(), 1)}


def test_a_signature_verifies_with_its_key_and_gives_back_the_signed_manifest(
    tmp_path: Path,
) -> None:
    key = create_key(tmp_path / "signing" / "ed25519.pem")
    envelope = sign(key, TAG, FILES, {"task": "classification"})
    manifest = verify(envelope, TAG, TrustedKeys(public_line(key.public_key())))
    assert (manifest.tag, manifest.files, manifest.metadata) == (
        TAG,
        FILES,
        {"task": "classification"},
    )
    assert manifest.key == key_id(key.public_key())
    assert key_id(load_key(tmp_path / "signing" / "ed25519.pem").public_key()) == manifest.key


def test_create_key_never_overwrites_a_key(tmp_path: Path) -> None:
    path = tmp_path / "ed25519.pem"
    create_key(path)
    before = path.read_bytes()
    with pytest.raises(Exception, match=str(path.name)):
        create_key(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("unsigned", "unsigned"),
        ("garbage", "malformed"),
        ("other key", "unknown_key"),
        ("edited manifest", "bad_signature"),
        ("other version", "wrong_version"),
        ("no trusted keys", "unknown_key"),
    ],
)
def test_verify_refuses_with_one_line_naming_the_version_and_the_reason(
    tmp_path: Path, change: str, reason: str
) -> None:
    key, stranger = create_key(tmp_path / "a.pem"), create_key(tmp_path / "b.pem")
    trusted = TrustedKeys(public_line(key.public_key()))
    envelope: str | None = sign(key, TAG, FILES, {})
    if change == "unsigned":
        envelope = None
    elif change == "garbage":
        envelope = "{not json"
    elif change == "other key":
        envelope = sign(stranger, TAG, FILES, {})
    elif change == "edited manifest":
        outer = json.loads(envelope)
        outer["manifest"] = outer["manifest"].replace('"metadata":{}', '"metadata":{"x":1}')
        envelope = json.dumps(outer)
    elif change == "other version":
        envelope = sign(key, "model:v2", FILES, {})
    elif change == "no trusted keys":
        trusted = TrustedKeys("")
    with pytest.raises(TrustError) as refused:
        verify(envelope, TAG, trusted)
    assert refused.value.reason == reason
    assert TAG in str(refused.value) and "\n" not in str(refused.value)


def test_trusted_keys_take_several_keys_and_reread_a_changed_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("scorebox.signing._RECHECK_SECONDS", 0.0)  # at most once a second
    first, second = create_key(tmp_path / "a.pem"), create_key(tmp_path / "b.pem")
    listing = tmp_path / "trusted"
    listing.write_text(public_line(first.public_key()) + "\n")
    trusted = TrustedKeys(str(listing))
    assert set(trusted.keys()) == {key_id(first.public_key())}
    # Rotation: a second key added to the file is trusted without a restart.
    listing.write_text(
        public_line(first.public_key()) + "\n" + public_line(second.public_key()) + "\n"
    )
    verify(sign(second, TAG, FILES, {}), TAG, trusted)
    # A line that is not a key is skipped (and logged), the others still count.
    listing.write_text("not a key\n" + public_line(second.public_key()) + "\n")
    assert set(trusted.keys()) == {key_id(second.public_key())}
