import os
import sys

# The helpers in testing.py are imported as a plain module.
sys.path.insert(0, os.path.dirname(__file__))
