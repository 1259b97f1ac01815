"""Offline evaluation of retrieval quality on BEIR-format datasets (``ragfleet eval retrieval``).

``beir`` reads a dataset folder, ``config`` the configurations to compare, ``metrics`` scores runs
with TREC-standard measures, ``retrieval`` runs configurations in-process on the services' own
components (the retriever's embedded index, the embedder's model, ``ragfleet.fusion``,
``ragfleet.chunking``), and ``report`` writes the Markdown table and the PNG chart.
"""
