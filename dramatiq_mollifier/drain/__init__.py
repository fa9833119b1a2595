"""Draining the buffer back onto the broker: the loop (:mod:`.drainer`), fairness
(:mod:`.rotation`), handler threads (:mod:`.handler_pool`, :mod:`.parallelism`), settling what
they did (:mod:`.settling`), the leases it holds (:mod:`.leases`), reclaiming and the depth gauge
(:mod:`.housekeeping`), waiting while idle (:mod:`.idle`), its own Redis connections
(:mod:`.connections`), shared broker connections (:mod:`.publisher`), the handler that re-enqueues
(:mod:`.handler`) and the drainer's life inside a worker process (:mod:`.worker_drainer`).
"""
