"""zreward-deploy."""
