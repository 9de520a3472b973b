"""Store operations of the CI review workflow (gate.runs.review, gate.runs.approve): the policy a
`wait` gives a run that records none, comparisons that are never computed (new, missing, refused
frames), the files' sha256 at submission, and approvals. Same conventions as gate.store.repository."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from gate.store.models import Approval, Comparison, Run, utcnow
from gate.vocabulary import FINISHED


def adopt_policy(session: Session, *, run_id: int, policy: Mapping[str, Any], threshold: float | None) -> bool:
    """Record `policy` (and `threshold`, when given) with a run that records no policy yet; False
    when it already records one (its submitter's, or the one its verdict was judged by)."""
    values: dict[str, Any] = {"policy": dict(policy)}
    if threshold is not None:
        values["threshold"] = threshold
    stmt = update(Run).where(Run.id == run_id, Run.policy.is_(None)).values(**values).returning(Run.id)
    return session.execute(stmt).first() is not None


Key = tuple[str, str]  # (ref, cand): a comparison within its run


def settle_unqueued(session: Session, *, run_id: int, settled: Mapping[Key, tuple[str, str | None]]) -> None:
    """Comparisons no worker computes, by (ref, cand): their final status (new, missing or error) and
    error text, set before anything is queued."""
    now = utcnow()
    for (ref, cand), (status, error) in settled.items():
        if status not in FINISHED:
            raise ValueError(f"{ref} -> {cand}: status {status!r} is not a final status")
        session.execute(
            update(Comparison)
            .where(Comparison.run_id == run_id, Comparison.ref == ref, Comparison.cand == cand)
            .values(status=status, error=error, finished_at=now)
        )


def record_hashes(session: Session, *, run_id: int, hashes: Mapping[Key, tuple[str | None, str | None]]) -> None:
    """The files' sha256 as measured, by (ref, cand): (ref's, cand's); None where there is no file."""
    for (ref, cand), (ref_sha, cand_sha) in hashes.items():
        session.execute(
            update(Comparison)
            .where(Comparison.run_id == run_id, Comparison.ref == ref, Comparison.cand == cand)
            .values(ref_sha256=ref_sha, cand_sha256=cand_sha)
        )


def record_approvals(session: Session, *, run_id: int, approved: Sequence[Mapping[str, Any]], by: str | None) -> None:
    """One row per replaced reference: {"ref", "cand", "sha256_before", "sha256_after"}."""
    now = utcnow()
    session.add_all(
        Approval(run_id=run_id, ref=row["ref"], cand=row["cand"], sha256_before=row["sha256_before"],
                 sha256_after=row["sha256_after"], approved_at=now, approved_by=by)
        for row in approved
    )


def approvals(session: Session, *, run_id: int) -> list[Approval]:
    return list(session.scalars(select(Approval).where(Approval.run_id == run_id).order_by(Approval.id)))
