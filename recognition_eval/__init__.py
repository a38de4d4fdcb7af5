"""recognition_eval package."""
