"""Pure dataset exports (no Django import): pair expansion, merges, TRL rows, hashing, cards."""
