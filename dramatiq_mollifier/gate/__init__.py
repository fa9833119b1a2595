"""The gate on every enqueue: the decision cascade (:mod:`.cascade`), the runtime org flags
(:mod:`.flags`) and the wrapper that lets a decision skip the broker write (:mod:`.interception`).
"""
