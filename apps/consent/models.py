"""Models arrive with their issue; the app exists so migrations and imports stay stable."""
