"""Draining the buffer back onto the broker: the loop (:mod:`.drainer`), fairness
(:mod:`.rotation`), handler threads (:mod:`.handler_pool`, :mod:`.parallelism`), settling what
they did (:mod:`.settling`), the handler that re-enqueues (:mod:`.handler`) and the drainer's life
inside a worker process (:mod:`.worker_drainer`).
"""
