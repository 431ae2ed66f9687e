"""Cloud Eye (CES) as a source of DCS events beside the background tasks (issue 13; being built)."""
