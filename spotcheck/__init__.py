"""spotcheck: product-quality supervisory spot checks, from the draw to the verdict."""

__version__ = "0.1.0"
