"""Identities: clustering face embeddings (scikit-learn), stable identity ids, user decisions, exemplars."""
