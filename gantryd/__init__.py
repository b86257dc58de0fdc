"""gantryd package."""
