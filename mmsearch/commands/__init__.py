"""Bodies of the heavier CLI commands, registered thinly in :mod:`mmsearch.cli`.

Modules here import torch, open_clip or lancedb only inside their functions, so that
``mmsearch --help`` stays fast.
"""
