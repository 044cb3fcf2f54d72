"""Payment providers behind one small interface (seed 6.2); one module per provider."""
