"""Items: the catalog, interaction and dataset loaders, item embeddings and semantic IDs."""

from .catalog import Catalog, CatalogError, Item, LoadIssue, LoadReport
from .embeddings import (Embedder, HFEmbedder, PrecomputedEmbedder, SentenceTransformerEmbedder, TfidfSvdEmbedder,
                         embed_catalog, get_embedder)
from .sids import COLLISION_POLICIES, SemanticIds, SidReport, build_sids, default_sid_config

__all__ = ["Catalog", "CatalogError", "Item", "LoadIssue", "LoadReport", "Embedder", "HFEmbedder",
           "PrecomputedEmbedder", "SentenceTransformerEmbedder", "TfidfSvdEmbedder", "embed_catalog", "get_embedder",
           "COLLISION_POLICIES", "SemanticIds", "SidReport", "build_sids", "default_sid_config"]
