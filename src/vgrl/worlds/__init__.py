"""Built-in procedural worlds: data, prompts with metadata, splits and verifiable checkers."""
