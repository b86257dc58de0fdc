"""gantry package."""
