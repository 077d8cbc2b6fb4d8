"""Cross-view retrieval: the encoder's embeddings, FAISS indexes, hard-negative pairing episodes."""
