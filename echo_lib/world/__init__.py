"""The world: simulated developers writing real code against the served model (see docs/world.md)."""
