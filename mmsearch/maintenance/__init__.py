"""Looking after an index (orchestration): what it holds, whether it is intact, disk use.

- :mod:`.info`: ``mmsearch info`` from manifests only (no torch, FAISS or LanceDB), and
  ``mmsearch check``'s full checksums.
- :mod:`.usage`: the sources an index holds, its disk use per component, its last run.
- :mod:`.evaluate`: a model's R@k on a captioned collection, indexed into a work folder
  and searched end to end.
"""
