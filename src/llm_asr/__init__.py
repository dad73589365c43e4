"""llm-asr: a decoder-only LLM turned into a multilingual speech recognizer."""
__version__ = "0.1.0"
