"""Mini-InternVL variants, chat templates, loading (HF-native and original layout) and key conversion."""
