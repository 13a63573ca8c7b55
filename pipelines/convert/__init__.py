"""``stf convert``: a checkpoint in the published LLaVA-STF layout -> our model directory, with
the same spec / ``--set`` form as every job (local directories; see docs/design.md section 3 for
the layout it reads)."""
