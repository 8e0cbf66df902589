"""The embedding engine: a decoder-only LLM in, unit vectors out.

Modules, in dependency order: :mod:`~kvemb_rag.engine.models` (bundled GGUF models),
:mod:`~kvemb_rag.engine.attention` (the re-routing attention function, the only home of transformers
internals), :mod:`~kvemb_rag.engine.loader` (loading and sharing models), :mod:`~kvemb_rag.engine.batching`,
:mod:`~kvemb_rag.engine.chunking` (long texts), :mod:`~kvemb_rag.engine.pooling`,
:mod:`~kvemb_rag.engine.config` (every engine setting, defined once), :mod:`~kvemb_rag.engine.inputs` (texts to
token ids, once), :mod:`~kvemb_rag.engine.forward` (padded batches, the forward pass, pooled vectors),
:mod:`~kvemb_rag.engine.calibration` and :mod:`~kvemb_rag.engine.layers` (layer selection),
:mod:`~kvemb_rag.engine.embedder` (:class:`~kvemb_rag.KVEmbedder`, which sets an engine up and hands the work to
those) and :mod:`~kvemb_rag.engine.shared` (one engine per settings per process).

The RAG side (file sources, the Chroma store, the Chroma embedding function, the server) sits beside this
package and uses it only through :class:`~kvemb_rag.KVEmbedder` and its settings. Importing this package
loads nothing heavy: import the modules themselves.
"""
