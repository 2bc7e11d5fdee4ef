"""Training building blocks: the EMA teacher update and per-iteration schedules."""
