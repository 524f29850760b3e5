"""Meme classifiers (fusion and unimodal models) over encoders and backbones from `fedmemes.models.components`."""
