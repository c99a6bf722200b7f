"""Presso: search for non-uniform compression plans of transformer models.

Importing ``presso`` is cheap: the heavy parts (torch, Optuna, Ray, MLflow) load only in
the subpackages that need them.
"""

__version__ = "0.1.0"
