"""Memory: MongoDB documents indexed per privacy scope in Chroma, with hybrid retrieval."""
