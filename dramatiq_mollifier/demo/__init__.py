"""``dramatiq-mollifier demo``: a real worker, a noisy tenant's burst, and what the mollifier did.

``app`` is the demo's Dramatiq app (broker, mollifier, actor), ``plan`` the traffic, ``worker``
the ``dramatiq`` subprocess, ``run`` the orchestration, ``report`` the table and the picture.
"""
