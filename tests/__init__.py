"""The test suite (pytest): test files named after what they test, shared helpers in tests/helpers, fixtures in
conftest.py."""
