"""Shopper questions and answers (issue 12): past question/answer pairs imported per catalog item
(:mod:`importer`), kept in the event store (:mod:`store`), ranked for a new question by one calibrated
scoring function shared by serving and ``vitrine eval qa`` (:mod:`rank`), and the facade the engine holds
(:mod:`service`). Attribute answers ("what is the weight?") come from the catalog itself."""
