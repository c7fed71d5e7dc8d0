"""Pixel cleaning: burned-in text found by rules and OCR, blanked in the pixel data, re-encoded losslessly where the input was."""
