"""Loaders of official IQA annotation formats, one module per family of file formats."""
