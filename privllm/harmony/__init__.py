"""gpt-oss speaks OpenAI's Harmony format: render the conversation here, stream only the final channel."""
