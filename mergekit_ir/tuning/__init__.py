"""α selection: the selector contract, the bootstrap and the do-no-harm guard."""
