"""Helpers shared by the test files: composing configs, running the CLI, writing small datasets, hand-written
references and small networks. Test files import from here (never from one another); ``conftest.py`` holds only
fixtures."""
