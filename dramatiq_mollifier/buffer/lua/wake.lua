-- wake: push a token on the drainers' wake-up list, so one idle drainer wakes (a drainer that
-- found work passes it on, so the next idle one joins the burst).
--
-- KEYS[1]  the drainers' wake-up list
-- Returns 1.

wake_idle_drainer(KEYS[1])
return 1
