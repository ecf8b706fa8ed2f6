"""Neural-network primitives shared by the model families: attention, embeddings, norms."""
