"""backbone package."""
