"""Released migrations never change.

Every commit on main is a release, and a database runs each migration once: one that
recorded a revision never runs that revision's text again, so a migration rewritten after
it reached main leaves every database migrated before with the old schema while saying it
is at head (resources_0006 and grants_0003 were, hence resources_0007 and grants_0004).
tests/fixtures/migration_checksums.sha256 holds the SHA-256 of every migration file of
every service (``sha256sum`` format); a new migration adds its line there."""

from __future__ import annotations

import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECKSUMS = ROOT / "tests/fixtures/migration_checksums.sha256"
RULE = 'docs/CONTRIBUTING.md, "Migrations"'


def _recorded() -> dict[str, str]:
    recorded = {}
    for line in CHECKSUMS.read_text().splitlines():
        digest, _, path = line.partition("  ")
        recorded[path] = digest
    return recorded


def _on_disk() -> dict[str, str]:
    return {
        str(path.relative_to(ROOT)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(ROOT.glob("services/*/migrations/versions/*.py"))
    }


def test_no_released_migration_changed_or_went_away() -> None:
    on_disk = _on_disk()
    changed = [
        f"{path} ({'removed' if path not in on_disk else 'changed'})"
        for path, digest in _recorded().items()
        if on_disk.get(path) != digest
    ]
    assert changed == [], (
        "a released migration must never change: databases that ran it never run it "
        "again. Restore it as it was (git checkout main -- FILE) and put the change in a "
        f"new migration instead ({RULE})"
    )


def test_every_migration_has_its_checksum_recorded() -> None:
    recorded = _recorded()
    missing = [path for path in _on_disk() if path not in recorded]
    assert missing == [], (
        f"new migrations: add their checksums to {CHECKSUMS.relative_to(ROOT)} "
        f"(sha256sum FILE >> {CHECKSUMS.relative_to(ROOT)}; {RULE})"
    )
