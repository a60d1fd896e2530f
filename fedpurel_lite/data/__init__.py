"""Data: a world's images encoded once by the frozen backbone into the bank a run reads.

``backbone`` (open_clip, through ``openclip_adapter``, the only reader of its internals) ->
``features`` / ``token_bank`` (caches, each entry a ``cache_entry``) -> ``bank`` (the ``Bank`` a run
trains on); ``longtail`` (class profiles and groups) and ``partition`` (the clients' shares: the
``Federation``); ``safe_load`` reads the JSON and TOML files the toolkit is handed.
"""
