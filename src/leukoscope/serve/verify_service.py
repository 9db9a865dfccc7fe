"""What verifying does, as plain synchronous functions the routes run off the event loop.

`VerificationService.record` checks a technologist's call against the loaded model's classes before anything
is written (422), appends it in one transaction that finds the prediction first (404), and names the
logged-in user or the token's holder. The worklist is every prediction no one has verified yet whose image
is still kept: flagged first, then the rest, newest first within each. Every method takes the caller's
clinic (None: every clinic, a network admin): another clinic's predictions and users answer 404, as if they
did not exist.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from leukoscope.serve import verifications
from leukoscope.serve.limits import RequestRejected
from leukoscope.serve.sessions import Principal, SessionStore
from leukoscope.serve.store import Store, StoredPrediction
from leukoscope.serve.users import User, Users
from leukoscope.serve.verifications import TrailFilters, TrailPage, Verification


class VerificationService:
    """The verification trail and the users table, behind the methods the routes call."""

    def __init__(self, store: Store, classes: Sequence[str] | Callable[[int | None], Sequence[str]],
                 sessions: SessionStore | None = None) -> None:
        self.store = store
        self._classes = classes if callable(classes) else (lambda _clinic, fixed=list(classes): fixed)
        self.sessions = sessions
        self.users = Users(store)

    def classes(self, clinic: int | None) -> list[str]:
        """The classes of the model `clinic` predicts with."""
        return list(self._classes(clinic))

    def record(self, prediction_id: str, principal: Principal, label: str | None, comment: str = "") -> Verification:
        """Append `principal`'s call (label None: unusable) on a prediction of their clinic; 422 for a class the
        model does not have, 404 for a prediction that does not exist there; nothing is written either way."""
        classes = self.classes(principal.clinic_id)
        if label is not None and label not in classes:
            raise RequestRejected(f"unknown class {label[:100]!r}; choose one of {classes} or unusable", 422)
        stored = verifications.add(self.store, prediction_id, principal.name, label, comment, clinic=principal.scope)
        if stored is None:
            raise RequestRejected(f"no prediction with id {prediction_id}", 404)
        return stored

    def trail(self, prediction_id: str, clinic: int | None) -> list[Verification]:
        """Every verification of one prediction, oldest first; 404 when the prediction does not exist (there)."""
        if self.store.get(prediction_id, clinic) is None:
            raise RequestRejected(f"no prediction with id {prediction_id}", 404)
        return verifications.trail(self.store, prediction_id, clinic=clinic)

    def listing(self, page: int, per_page: int, filters: TrailFilters) -> TrailPage:
        return verifications.page(self.store, page, per_page, filters)

    def worklist(self, limit: int, clinic: int | None, after_id: str | None = None,
                 after_flagged: bool = True) -> tuple[list[StoredPrediction], int]:
        """Predictions awaiting verification (flagged first, newest first within each) and how many await;
        404 when `after_id` names no prediction of the clinic."""
        after_pk = None
        if after_id is not None:
            after_pk = verifications.pk_of(self.store, after_id, clinic)
            if after_pk is None:
                raise RequestRejected(f"no prediction with id {after_id}", 404)
        return verifications.pending(self.store, limit, clinic=clinic, after_pk=after_pk, after_flagged=after_flagged)

    def all_users(self, clinic: int | None) -> list[User]:
        return self.users.all_users(clinic)

    def set_disabled(self, name: str, disabled: bool, clinic: int | None) -> User:
        """Disable or enable a user of `clinic`; a disabled user's sessions end at once. 404 when there is no
        such user there."""
        if self.users.get(name, clinic) is None:
            raise RequestRejected(f"no user named {name[:80]!r}", 404)
        user = self.users.set_disabled(name, disabled)
        if disabled and self.sessions is not None:
            self.sessions.revoke_user(user.name)
        return user
