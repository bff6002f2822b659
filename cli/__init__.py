"""The top layer: the ``mind-recall`` command line and the demo. Nothing below imports it
(tests/unit/test_layering.py)."""
