"""Pure decisions of (domain values, settings, now): no I/O, no runtime."""
