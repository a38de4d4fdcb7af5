"""Clusformer (Nguyen et al., CVPR 2021): transformer clustering over visual-grammar kNN sequences.

Importing this package registers the method "clusformer" (and so "clusformer+infomap").
"""

from clustering.clusformer.config import ClusformerConfig
from clustering.clusformer.method import Clusformer
from clustering.clusformer.model import ClusformerNet
from clustering.clusformer.sequences import SequenceBatch, build_sequences

__all__ = [
    "Clusformer",
    "ClusformerConfig",
    "ClusformerNet",
    "SequenceBatch",
    "build_sequences",
]
