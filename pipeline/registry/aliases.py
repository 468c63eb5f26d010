"""The registry aliases that carry meaning in this project (the only place their names are spelled)."""

CHAMPION = "champion"  # what is served; moved only by an approved promotion or a rollback
CHALLENGER = "challenger"  # a blessed, registered version waiting for a decision
PREVIOUS = "previous"  # the champion before the last promotion (one-step rollback)
ALL = (CHAMPION, CHALLENGER, PREVIOUS)
