"""Run directories, seeding, devices, metrics and progress: what every command shares."""
