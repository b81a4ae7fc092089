"""Optional parts of the operations app; a host turns each one on by adding it to INSTALLED_APPS."""
