"""Meme data: sources (local folder, HF hub, synthetic), validation and image loading."""
