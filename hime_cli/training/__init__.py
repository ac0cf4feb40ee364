"""Training data, the training loop and evaluation of HIME."""
