import os
import sys

# Tests run from a clean clone without installing: make the checkout importable, and let
# spawned workers (which inherit sys.path) find it too.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
