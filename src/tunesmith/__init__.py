"""tunesmith: turn a general pre-trained language model into a specialist, cheaply and reversibly."""

__version__ = "0.1.0"
