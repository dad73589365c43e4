"""Tests for llm_asr.data, llm_asr.features and the data stages."""
