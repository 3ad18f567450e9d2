"""The learning loop: what shoppers are shown and what they do next, turned into a better ranking.

Owns impressions (:mod:`~engine.learn.impressions`), attribution (:mod:`~engine.learn.attribution`), the
training rows (:mod:`~engine.learn.dataset`), the learned ranker (:mod:`~engine.learn.train`,
:mod:`~engine.learn.model`) and the sequence model behind its ``seq`` features
(:mod:`~engine.learn.sequence`), published versions (:mod:`~engine.learn.registry`,
:mod:`~engine.learn.serve`), experiments, and exploration: stochastic policies, bandits, Q-learning and
off-policy evaluation (:mod:`~engine.learn.policy`, :mod:`~engine.learn.bandits`,
:mod:`~engine.learn.qlearning`, :mod:`~engine.learn.online`, :mod:`~engine.learn.ope`).
"""
