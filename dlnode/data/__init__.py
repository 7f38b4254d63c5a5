"""The dataset: its schema and assembly (`schema`), and safe files on disk (`storage`)."""
