"""The learning loop: what shoppers are shown and what they do next, turned into a better ranking.

Owns impressions (:mod:`engine.learn.impressions`: every list served is logged with its ``request_id``,
positions and the features its ranking used); attribution, training data, the learned ranker and
experiments come next (issue 9).
"""
