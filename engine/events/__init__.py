"""Shopper events: validation, durable storage, incremental features and bulk import."""
from __future__ import annotations

from engine.events.features import FeatureConfig
from engine.events.model import (MAX_BATCH, Event, EventType, InvalidEvent, RejectedEvent, validate_event,
                                 validate_many)
from engine.events.store import (AddResult, EventStore, SQLiteEventStore, StoreTables, open_event_store,
                                 register_backend)

__all__ = [
    "MAX_BATCH", "AddResult", "Event", "EventStore", "EventType", "FeatureConfig", "InvalidEvent",
    "RejectedEvent", "SQLiteEventStore", "StoreTables", "open_event_store", "register_backend", "validate_event",
    "validate_many",
]
