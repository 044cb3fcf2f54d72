"""The boxes domain: lifecycle engine, steps, control, status document, watches, teardown."""
