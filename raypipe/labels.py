"""The two classes, one definition: row labels, logit indices and metrics all use these."""

LIVE = 0  # bona fide presentation
ATTACK = 1  # presentation attack (spoof)
