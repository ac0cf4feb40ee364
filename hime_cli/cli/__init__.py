"""The ``hime`` command line (typer + rich). Torch and the models are imported inside commands."""
