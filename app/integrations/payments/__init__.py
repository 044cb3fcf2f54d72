"""Payment providers behind one small interface; one module per provider."""
