"""Behaviour analytics (issue 12): funnels, search analytics, cohorts, RFM segments and movers over the
event store, with an optional differentially private answer.

Owns: the columnar copy of the events (:mod:`engine.analytics.mirror`, DuckDB, refreshed from the store
and purged of deleted shoppers), the reports' SQL (:mod:`engine.analytics.reports`), the Laplace
mechanism and the per-key daily privacy budget (:mod:`engine.analytics.dp`), and the facade the Engine
holds (:class:`engine.analytics.service.Analytics`). Reads the event store only, except for its own two
tables (``analytics_source``, ``analytics_privacy``).
"""
