"""Generic infrastructure: config stack (--base merge, overrides, validation) and run settings."""
