"""``python -m mmsearch.evaluation``: caption-match figures of a model on a generated catalog."""

from mmsearch.evaluation.synthetic import main

main()
