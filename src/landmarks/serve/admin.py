"""`landmarks serve-admin RUN token create|list|revoke` and what `landmarks serve` says when it starts, as functions."""

from __future__ import annotations

import time
from pathlib import Path

from landmarks.errors import LandmarksError
from landmarks.serve.settings import Settings
from landmarks.store import ROLES, Store, Token

CLI_ACTOR = "command line"


def _store(run_dir: Path) -> Store:
    run_dir = Path(run_dir)
    if not (run_dir / "model.json").exists():
        raise LandmarksError(f"{run_dir} is not a run folder (model.json is missing).")
    return Store.open(run_dir)


def create_token(run_dir: Path, role: str, name: str = "") -> tuple[int, str]:
    """(token id, secret) of a new token; the secret is never shown again (the store keeps its SHA-256)."""
    if role not in ROLES:
        raise LandmarksError(f"Role {role!r} is not one of {', '.join(ROLES)}.")
    with _store(run_dir).transaction() as tx:
        token_id, secret = tx.add_token(role, name)
        tx.audit(CLI_ACTOR, "create_token", token_id=token_id, role=role, name=name)
    return token_id, secret


def list_tokens(run_dir: Path) -> list[Token]:
    return _store(run_dir).tokens()


def revoke_token(run_dir: Path, token_id: int) -> None:
    with _store(run_dir).transaction() as tx:
        if not tx.revoke_token(token_id):
            raise LandmarksError(f"No active token with id {token_id} (see `landmarks serve-admin {run_dir} token list`).")
        tx.audit(CLI_ACTOR, "revoke_token", token_id=token_id)


def format_tokens(tokens: list[Token]) -> str:
    """The token table that `token list` prints (never a secret: the store has none)."""
    lines = [f"{'id':>4}  {'role':<11}  {'created':<16}  {'state':<8}  name"]
    for t in tokens:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(t.created))
        lines.append(f"{t.token_id:>4}  {t.role:<11}  {created:<16}  {'revoked' if t.revoked else 'active':<8}  {t.name}")
    return "\n".join(lines) if tokens else "no tokens yet"


def startup_notes(run_dir: Path, settings: Settings) -> list[str]:
    """What `landmarks serve` says before it starts: open mode, or how to create the first admin token."""
    if settings.open:
        return ["open service (--open): anyone who can reach it may correct, enrol and delete, without a token."]
    notes = []
    if not _store(run_dir).has_active_admin():
        notes.append("no admin token yet, so every change is refused; create one with\n"
                     f"    landmarks serve-admin {run_dir} token create --role admin --name YOUR_NAME\n"
                     "and paste it on the page (Sign in).")
    notes.append(settings.retention_note())
    return notes
