"""The A-FINE ``evaluate`` metric: ``afine.py`` (what ``evaluate.load`` reads) and its card ``README.md``."""
