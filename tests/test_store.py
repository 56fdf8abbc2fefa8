"""The store: hashed tokens, one transaction per change (all or nothing), upload expiry, reference changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from landmarks.store import STORE_FILE, Store, Upload, hash_token, read_reference_changes


def upload(upload_id: str, created: float) -> Upload:
    return Upload(upload_id, created, "ip:1", f"photo-{upload_id}", 7, "seven", 0.5, np.ones(4, np.float32), b"jpeg")


def test_tokens_are_stored_as_hashes_and_revocation_is_final(tmp_path: Path):
    store = Store.open(tmp_path)
    with store.transaction() as tx:
        token_id, secret = tx.add_token("admin", "Ada")
    assert hash_token(secret) == __import__("hashlib").sha256(secret.encode()).hexdigest()
    assert secret.encode() not in (tmp_path / STORE_FILE).read_bytes()
    assert store.token_for(secret).role == "admin" and store.token_for(secret + "x") is None
    with store.transaction() as tx:
        assert tx.revoke_token(token_id) and not tx.revoke_token(token_id)
    assert store.token_for(secret) is None and not store.has_active_admin()


def test_a_failed_transaction_writes_nothing(tmp_path: Path):
    store = Store.open(tmp_path)
    with pytest.raises(RuntimeError):
        with store.transaction() as tx:
            tx.add_landmark(5000, "Half", "me")
            tx.add_references([("photo-a", np.ones(4, np.float32), b"x")], 5000, "enrol", "me")
            tx.audit("me", "enrol")
            raise RuntimeError("crash in the middle")
    assert not store.reference_changes() and store.audit() == []


def test_purge_keeps_the_newest_uploads_within_their_time(tmp_path: Path):
    store = Store.open(tmp_path)
    with store.transaction() as tx:
        for i in range(10):
            tx.add_upload(upload(f"u{i}", created=1000.0 + i))
    with store.transaction(now=1009.5) as tx:
        assert tx.purge_uploads(keep_seconds=3600, max_uploads=4) == 6
    assert [store.upload(f"u{i}") is not None for i in range(10)] == [False] * 6 + [True] * 4
    with store.transaction(now=1000.0 + 3600 + 7.5) as tx:  # u6 and u7 are older than an hour by then
        assert tx.purge_uploads(keep_seconds=3600, max_uploads=4) == 2
    assert store.upload_count() == 2 and store.upload("u9").photo == b"jpeg"


def test_reference_changes_removed_then_added_back_and_deleted_landmarks(tmp_path: Path):
    store = Store.open(tmp_path)
    vector = np.arange(4, dtype=np.float32)
    with store.transaction() as tx:
        tx.remove_reference("trained-1", 7, trained=True, removed_by="me")
        tx.remove_reference("trained-2", 7, trained=True, removed_by="me")
        tx.add_references([("trained-2", vector, None)], 7, "move", "me")  # given back: simply not removed any more
        tx.add_landmark(9000, "New", "me")
        tx.add_references([("photo-b", vector, b"x")], 9000, "enrol", "me")
    changes = read_reference_changes(tmp_path)
    assert changes.removed == {("trained-1", 7)} and changes.enrolled == {9000: "New"}
    assert [(i, l) for i, l, _ in changes.added] == [("photo-b", 9000)]
    np.testing.assert_array_equal(changes.added[0][2], vector)
    with store.transaction() as tx:
        tx.delete_landmark(9000, "New", "me")
    changes = read_reference_changes(tmp_path)
    assert changes.deleted == {9000: "New"} and not changes.enrolled and not changes.added
    assert store.max_landmark_id() == 9000
    assert not read_reference_changes(tmp_path / "elsewhere")  # no store: no changes, nothing created
    assert not (tmp_path / "elsewhere").exists()
