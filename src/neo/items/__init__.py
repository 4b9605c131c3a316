"""Items: the catalog, interaction and dataset loaders, item embeddings (text and collaborative) and
semantic IDs."""

from .catalog import Catalog, CatalogError, Item, LoadIssue, LoadReport
from .collaborative import (CF_METHODS, EMBEDDING_KINDS, ColdItemsWarning, collaborative_embeddings,
                            hybrid_embeddings, sid_embeddings)
from .embeddings import (Embedder, HFEmbedder, PrecomputedEmbedder, SentenceTransformerEmbedder, TfidfSvdEmbedder,
                         embed_catalog, get_embedder)
from .sids import (COLLISION_POLICIES, SemanticIds, SidCollisionWarning, SidReport, build_sids,
                   default_sid_config)

__all__ = ["Catalog", "CatalogError", "Item", "LoadIssue", "LoadReport", "Embedder", "HFEmbedder",
           "PrecomputedEmbedder", "SentenceTransformerEmbedder", "TfidfSvdEmbedder", "embed_catalog", "get_embedder",
           "CF_METHODS", "EMBEDDING_KINDS", "ColdItemsWarning", "collaborative_embeddings", "hybrid_embeddings",
           "sid_embeddings", "COLLISION_POLICIES", "SemanticIds", "SidCollisionWarning", "SidReport", "build_sids",
           "default_sid_config"]
