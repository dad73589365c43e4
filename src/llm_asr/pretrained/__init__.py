"""Pretrained models brought in from other formats (CTranslate2 Whisper -> PyTorch), loaded strictly."""
