"""Dual memory in Chroma: semantic rules and episodic prototypes."""
