"""What verifying does, as plain synchronous functions the routes run off the event loop.

`VerificationService.record` checks a technologist's call against the loaded model's classes before anything
is written (422), appends it in one transaction that finds the prediction first (404), and names the
logged-in user or the token's holder. The worklist is every prediction no one has verified yet whose image
is still kept: flagged first, then the rest, newest first within each.
"""

from __future__ import annotations

from collections.abc import Sequence

from leukoscope.serve import verifications
from leukoscope.serve.limits import RequestRejected
from leukoscope.serve.sessions import Principal, SessionStore
from leukoscope.serve.store import Store, StoredPrediction
from leukoscope.serve.users import User, Users
from leukoscope.serve.verifications import TrailFilters, TrailPage, Verification


class VerificationService:
    """The verification trail and the users table, behind the methods the routes call."""

    def __init__(self, store: Store, classes: Sequence[str], sessions: SessionStore | None = None) -> None:
        self.store = store
        self.classes = list(classes)
        self.sessions = sessions
        self.users = Users(store)

    def record(self, prediction_id: int, principal: Principal, label: str | None, comment: str = "") -> Verification:
        """Append `principal`'s call (label None: unusable) on a prediction; 422 for a class the model does not
        have, 404 for a prediction that does not exist; nothing is written either way."""
        if label is not None and label not in self.classes:
            raise RequestRejected(f"unknown class {label[:100]!r}; choose one of {self.classes} or unusable", 422)
        stored = verifications.add(self.store, prediction_id, principal.name, label, comment)
        if stored is None:
            raise RequestRejected(f"no prediction with id {prediction_id}", 404)
        return stored

    def trail(self, prediction_id: int) -> list[Verification]:
        """Every verification of one prediction, oldest first; 404 when the prediction does not exist."""
        if self.store.get(prediction_id) is None:
            raise RequestRejected(f"no prediction with id {prediction_id}", 404)
        return verifications.trail(self.store, prediction_id)

    def listing(self, page: int, per_page: int, filters: TrailFilters) -> TrailPage:
        return verifications.page(self.store, page, per_page, filters)

    def worklist(self, limit: int, after_id: int | None = None,
                 after_flagged: bool = True) -> tuple[list[StoredPrediction], int]:
        """Predictions awaiting verification (flagged first, newest first within each) and how many await."""
        return verifications.pending(self.store, limit, after_id=after_id, after_flagged=after_flagged)

    def all_users(self) -> list[User]:
        return self.users.all_users()

    def set_disabled(self, name: str, disabled: bool) -> User:
        """Disable or enable a user; a disabled user's sessions end at once. 404 when there is no such user."""
        if self.users.get(name) is None:
            raise RequestRejected(f"no user named {name[:80]!r}", 404)
        user = self.users.set_disabled(name, disabled)
        if disabled and self.sessions is not None:
            self.sessions.revoke_user(user.name)
        return user
