"""The critique agent: a LangGraph ``render → recall → critique → reflect ⟲ → memory_write`` graph."""
