"""Encoders and fusion models: plain torch modules with typed constructor args."""
