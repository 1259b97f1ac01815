"""Feedback, the gateway's fourth use case: every answer is recorded (``ragfleet.flywheel``) and
a caller rates it later by its ``answer_id``.

Answers reach the store through a ``SpooledRecorder``: each is appended to a spool file on disk
before the answer is sent, and a background task moves them into the store, so a store that is
slow or down never holds up an answer and loses nothing. Feedback is written to the store
directly: when it is down the call fails with UNAVAILABLE and the caller retries.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from ragfleet.flywheel.recorder import SpooledRecorder
from ragfleet.flywheel.records import Feedback, check_feedback
from ragfleet.flywheel.store import FeedbackStore, open_store
from ragfleet.runtime.logging import get_logger
from ragfleet_gateway.domain import FeedbackRequest
from ragfleet_gateway.settings import GatewaySettings

log = get_logger(__name__)


class FeedbackDesk:
    """The answer store of one gateway and the recorder in front of it."""

    def __init__(self, store: FeedbackStore, recorder: SpooledRecorder) -> None:
        self.store = store
        self.recorder = recorder

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> FeedbackDesk | None:
        """None when ``feedback_store`` is empty (answers are not recorded). Raises
        ``InvalidInput`` for a store address it cannot use."""
        if not settings.feedback_store:
            return None
        store = open_store(settings.feedback_store)
        return cls(store, SpooledRecorder(store, settings.feedback_spool_dir))

    async def start(self) -> None:
        await self.recorder.start()

    async def close(self) -> None:
        """Stops the recorder (what the store did not take stays in the spool for the next
        start) and closes the store."""
        await self.recorder.aclose()
        await self.store.close()

    async def give(self, tenant: str, request: FeedbackRequest) -> str:
        """Records ``request`` against an answer of ``tenant``; returns the feedback's id.
        Raises ``InvalidInput`` naming the field at fault, ``NotFound`` for an answer id this
        tenant was never given, ``Unavailable`` when the store is down."""
        feedback = Feedback(
            feedback_id=uuid.uuid4().hex,
            answer_id=request.answer_id,
            tenant=tenant,
            created_at=datetime.now(UTC),
            rating=request.rating,
            comment=request.comment,
            correction=request.correction,
        )
        check_feedback(feedback)
        # An answer given a moment ago may still be in the spool.
        await self.recorder.flush()
        await self.store.add_feedback(feedback)
        log.info("feedback", answer_id=feedback.answer_id, rating=feedback.rating)
        return feedback.feedback_id
