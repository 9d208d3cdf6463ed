"""RAG: split documents into passages, embed them, feed them on chunk boundaries."""
