"""What the agent is and how it proposes: model presets, the tokenizer, the completion engine and its show policy."""
