"""Inference: the Predictor (rnntext.load), ensembles of saved runs, and evaluation of a saved run."""
