"""Weight mappings to and from other libraries' model formats (diffusers)."""
