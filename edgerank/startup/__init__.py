"""The composition root: what will serve, decided once (resolve) and opened (open)."""
